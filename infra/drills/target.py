"""The stack a drill runs against: its components, its event flow, or a private stack of its own.

A drill breaks components through the supervisor, the way an operator would
(``payfn down kafka`` stops the broker with SIGTERM so it snapshots its data;
``up`` starts it again and re-provisions it), and kills function hosts or
execution environments with SIGKILL, the way a crash would.

The event flow (the outbox relay's scheduler and the Kafka event-source poller) is
found in the registry (apps ``SCHEDULER`` and ``EVENT-SOURCE-POLLER``). When the
stack does not run them, the drill runs them itself for its own duration (and
says so in its report): a drill's promise is that every payment ends up published
and consumed, which needs both.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from payfn_shared.platform.config import Settings
from payfn_shared.platform.registry import InstanceInfo, RegistryClient, RegistryError

from infra.sam.template import REPO_ROOT
from infra.stack.component import Component
from infra.stack.components import INFRASTRUCTURE
from infra.stack.process import ManagedProcess, free_port, pid_alive
from infra.stack.services import FunctionHostService
from infra.stack.supervisor import Supervisor

SCHEDULER_APP = "SCHEDULER"
POLLER_APP = "EVENT-SOURCE-POLLER"
EVENT_FLOW = {
    SCHEDULER_APP: ["-m", "infra.eventsource.scheduler"],
    POLLER_APP: ["-m", "infra.eventsource", "--instance", "drill"],
}


@dataclass
class DrillTarget:
    """The live stack as the supervisor of the current environment sees it."""

    supervisor: Supervisor = field(default_factory=Supervisor)
    helpers: list[ManagedProcess] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.supervisor.settings

    @property
    def registry(self) -> RegistryClient:
        return RegistryClient(self.settings.registry_url, timeout=3.0)

    def component(self, name: str) -> Component:
        return self.supervisor.component(name)

    def pid(self, name: str) -> int | None:
        return self.supervisor.process(self.component(name)).pid

    def stop(self, name: str) -> bool:
        """Stop one component the supervisor's way (SIGTERM, wait, SIGKILL); True if clean."""
        results = self.supervisor.down([name])
        return all(clean for _, clean in results) and bool(results)

    def start(self, name: str) -> str:
        """Start one infrastructure component again (and re-provision it); returns its state."""
        factory = next(f for f in INFRASTRUCTURE if f.name == name)
        status = Supervisor(settings=self.settings, template=self.supervisor.template,
                            components=[factory]).up()[0]
        return status.state

    def restore(self) -> list[str]:
        """Bring every component of the stack up again; returns the names that had to be started."""
        statuses = Supervisor(settings=self.settings, template=self.supervisor.template).up()
        return [s.name for s in statuses if s.state == "started"]

    def hosts(self, service: str) -> list[FunctionHostService]:
        return [c for c in self.supervisor.components
                if isinstance(c, FunctionHostService) and c.service == service]

    def instances(self, app: str) -> list[InstanceInfo]:
        try:
            return [i for i in self.registry.instances(app) if i.status == "UP"]
        except (RegistryError, OSError):
            return []

    def kill_process_group(self, pid: int) -> None:
        """SIGKILL a component and everything it forked (its execution environments)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def ensure_event_flow(self, timeout: float) -> list[str]:
        """Run the relay scheduler and the event-source poller if the stack does not; returns
        the apps the drill had to start itself."""
        started = []
        run_dir = self.supervisor.paths.root / "drills"
        for app, argv in EVENT_FLOW.items():
            if self.instances(app):
                continue
            process = ManagedProcess(f"drill-{app.lower()}", run_dir, self.supervisor.paths.logs)
            if process.pid is None:
                process.start([sys.executable, *argv], env=dict(os.environ), cwd=REPO_ROOT)
            self.helpers.append(process)
            started.append(app)
        deadline = time.monotonic() + timeout
        while any(not self.instances(app) for app in started) and time.monotonic() < deadline:
            time.sleep(0.3)
        return started

    def stop_helpers(self) -> None:
        for process in self.helpers:
            process.stop(timeout=15)
        self.helpers.clear()


def private_port(host: str = "127.0.0.1") -> int:
    """A free port BELOW the kernel's ephemeral range.

    ``free_port()`` hands out ephemeral ports. For a component a drill stops, that is a
    trap: while the broker is down, its clients keep reconnecting to its port, and a
    connect to a free port of the ephemeral range can be given that same port as its
    source (a TCP self-connect), so the "stopped" broker's port is suddenly open and
    held by a client. Ports outside the range can never be a connection's source port.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as ports:
            low = int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    return free_port(host)


def private_environment(root: Path, parameters: Mapping[str, str] | None = None) -> dict[str, str]:
    """``PAYFN_*`` variables of a stack of its own: own folder, no ``.env``, free ports everywhere.

    The read-only database password is chosen here and also handed to the functions as
    the template parameter ``DbReadonlyPassword``: the local runtime fills the writer's
    password into the template parameters but not the reader's, and without it the
    monitoring API (whose reconciliation the drills consult) cannot connect.
    """
    readonly_password = secrets.token_urlsafe(18)
    env = {
        "PAYFN_DB_READONLY_PASSWORD": readonly_password,
        "PAYFN_PARAMETER_DbReadonlyPassword": readonly_password,
        "PAYFN_STACK_DIR": str(root / "stack"),
        "PAYFN_ENV_FILE": "/nonexistent",
        "PAYFN_DB_PORT": str(private_port()),
        "PAYFN_REDIS_PORT": str(private_port()),
        "PAYFN_KAFKA_BOOTSTRAP": f"127.0.0.1:{private_port()}",
        "PAYFN_AWS_ENDPOINT_URL": f"http://127.0.0.1:{private_port()}",
        "PAYFN_PROMETHEUS_PORT": str(private_port()),
        "PAYFN_REGISTRY_PORT": str(private_port()),
        "PAYFN_GATEWAY_PORT": str(private_port()),
    }
    env.update({f"PAYFN_PARAMETER_{name}": value for name, value in (parameters or {}).items()})
    return env


@contextlib.contextmanager
def private_stack(parameters: Mapping[str, str] | None = None, scale: Mapping[str, int] | None = None,
                  extra_env: Mapping[str, str] | None = None) -> Iterator[DrillTarget]:
    """A whole stack on free ports in a temporary folder, for this process only; stopped and
    deleted afterwards. The shared stack (default ports, ``.stack``) is never touched."""
    root = Path(tempfile.mkdtemp(prefix="payfn-drill-"))
    env = {**private_environment(root, parameters), **(extra_env or {})}
    saved = {key: value for key, value in os.environ.items() if key.startswith("PAYFN_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    target: DrillTarget | None = None
    try:
        supervisor = Supervisor(scale=scale)
        target = DrillTarget(supervisor)
        supervisor.up()
        yield target
    finally:
        if target is not None:
            target.stop_helpers()
        Supervisor().down()
        for key in [k for k in os.environ if k.startswith("PAYFN_")]:
            del os.environ[key]
        os.environ.update(saved)
        shutil.rmtree(root, ignore_errors=True)
