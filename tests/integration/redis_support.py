"""A private redis-server for tests that must stop Redis (never the shared stack's instance).

It is started with the supervisor's own component class (``infra.stack.components.Redis``)
on a free port, with its data in the test's temporary folder.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from payfn_shared.platform.config import Settings

from infra.sam.template import Template
from infra.stack.component import StackPaths
from infra.stack.components import Redis
from infra.stack.process import ManagedProcess, free_port


class PrivateRedis:
    """One redis-server process that a test can stop and start again on the same port."""

    def __init__(self, root: Path) -> None:
        self.settings = replace(Settings(), redis_host="127.0.0.1", redis_port=free_port(), redis_password="")
        paths = StackPaths(root)
        self.component = Redis(self.settings, paths, Template({}))
        self.process = ManagedProcess("private-redis", paths.run, paths.logs)

    @property
    def url(self) -> str:
        return self.settings.redis_url

    def start(self, timeout: float = 10.0) -> None:
        self.component.prepare()
        self.process.start(self.component.command(), env=self.component.environment())
        deadline = time.monotonic() + timeout
        while not self.component.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server on {self.component.address} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.stop(timeout=10.0)


@contextmanager
def private_redis(root: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()
