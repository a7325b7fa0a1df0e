"""What every process of the local stack is to the supervisor: :class:`Component`, and where it keeps things.

A component knows how to prepare its data folder, the argv that runs it, one
real protocol call that proves it healthy and the idempotent provisioning that
follows, so that a second ``payfn up`` changes nothing. :class:`StackPaths` is the
one folder holding data, pid files and logs; :class:`StackError` is what the CLI
prints as a readable message.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from payfn_shared.platform.config import Settings

from infra.sam.template import Template

#: How long a component may take to answer its first health check.
DEFAULT_START_TIMEOUT = 45.0


class StackError(RuntimeError):
    """A failure the CLI reports as a readable message (never a traceback)."""


@dataclass(frozen=True)
class StackPaths:
    """Where the local stack keeps data, pid files and logs (all under one folder)."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def data(self, name: str) -> Path:
        return self.root / name


class Component(ABC):
    """One local process of the stack."""

    #: Short name used in the status table, pid file and ``payfn logs NAME``.
    name: str
    #: Human name in messages.
    title: str
    #: Environment variable that moves this component's port.
    port_variable: str
    #: Seconds to wait after SIGTERM before SIGKILL.
    stop_timeout: float = 20.0
    start_timeout: float = DEFAULT_START_TIMEOUT
    #: False for processes on ephemeral ports (function hosts): nothing to collide with.
    fixed_port: bool = True
    #: Work no client waits on (consumers, the scheduler, the event-source poller,
    #: scraping): started ``PAYFN_BACKGROUND_NICE`` nicer, so that on a busy machine it
    #: yields the cores to the request path and catches up in the gaps, instead of
    #: adding its share to every request's latency.
    background: bool = False

    def __init__(self, settings: Settings, paths: StackPaths, template: Template) -> None:
        self.settings = settings
        self.paths = paths
        self.template = template

    @property
    @abstractmethod
    def host(self) -> str: ...

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def prepare(self) -> None:  # noqa: B027 - optional hook, most components need nothing
        """Create the data folder and whatever must exist before the first start."""

    @abstractmethod
    def command(self) -> list[str]:
        """argv that runs the component in the foreground."""

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def niceness(self) -> int:
        """What the supervisor adds to this component's niceness when it starts it."""
        return self.settings.background_nice if self.background else 0

    @abstractmethod
    def healthy(self) -> bool:
        """One real protocol call with a short timeout."""

    def provision(self, owned: bool) -> None:  # noqa: B027 - optional hook
        """Idempotent set-up after the component is healthy (``owned``: we started it)."""

    def url(self) -> str | None:
        """A URL worth printing for a person, if the component has one."""
        return None

    def before_stop(self) -> None:  # noqa: B027 - optional hook, most components stop on SIGTERM alone
        """Called just before our process of this component gets SIGTERM."""


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local http URL
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
