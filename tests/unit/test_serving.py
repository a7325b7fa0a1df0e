"""``infra.net.serving``: the shutdown tail of the asyncio servers' mains and the background main."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
from payfn_shared.platform.config import ConfigError, Settings
from payfn_shared.platform.registry import RegistryClient
from prometheus_client import CollectorRegistry

from infra.net.serving import BackgroundWork, background_main, background_parser, serve_until_signal


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


@pytest.fixture
def restored_signal_handlers() -> Iterator[None]:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_background_main_runs_the_work_until_a_signal(restored_signal_handlers: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []
    seen: list[frozenset[str]] = []

    def build(args: argparse.Namespace, settings: Settings, registry: RegistryClient) -> BackgroundWork:
        seen.append(args.functions)

        def start() -> None:
            calls.append("start")
            os.kill(os.getpid(), signal.SIGTERM)

        return BackgroundWork(CollectorRegistry(), lambda: {"status": "UP"}, start,
                              lambda: calls.append("stop"), "test")

    parser = background_parser("test", "a background process")
    argv = ["--no-register", "--functions", " A, ,B"]
    assert background_main(parser, "TEST", build, argv) == 0
    assert calls == ["start", "stop"]
    assert seen == [frozenset({"A", "B"})]
    assert capsys.readouterr().out.startswith("LISTENING 127.0.0.1:")


def test_background_main_exits_2_on_a_startup_error(restored_signal_handlers: None,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    def build(args: argparse.Namespace, settings: Settings, registry: RegistryClient) -> BackgroundWork:
        raise ConfigError("PAYFN_EXAMPLE=x is not a valid int")

    parser = background_parser("test", "a background process")
    assert background_main(parser, "TEST", build, ["--no-register"]) == 2
    assert "PAYFN_EXAMPLE=x is not a valid int" in caplog.text
