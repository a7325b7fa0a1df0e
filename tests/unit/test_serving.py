"""``infra.serving.serve_until_signal``: the shutdown tail of the gateway's and the hosts' mains."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Any, cast

import pytest

from infra.serving import serve_until_signal


class FakeLease:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def stop(self) -> None:
        time.sleep(0.01)  # runs on a thread: close must still wait for it
        self.calls.append("deregister")


async def run_until(signum: int, lease: FakeLease | None, calls: list[str]) -> None:
    async def close() -> None:
        calls.append("close")

    loop = asyncio.get_running_loop()
    logger = logging.getLogger("test.serving")
    tail = loop.create_task(serve_until_signal(cast(Any, lease), close, logger))
    await asyncio.sleep(0)  # let it install its handlers
    assert calls == []  # nothing happens before a signal
    os.kill(os.getpid(), signum)
    await asyncio.wait_for(tail, timeout=5)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_deregisters_before_closing_on_signal(signum: int, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    with caplog.at_level(logging.INFO, logger="test.serving"):
        asyncio.run(run_until(signum, FakeLease(calls), calls))
    assert calls == ["deregister", "close"]
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("test.serving", "stopping")]


def test_closes_without_lease() -> None:
    calls: list[str] = []
    asyncio.run(run_until(signal.SIGTERM, None, calls))
    assert calls == ["close"]
