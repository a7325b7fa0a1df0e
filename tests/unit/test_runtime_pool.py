"""FunctionPool's queue: expired and cancelled waiters, and the cap on cold starts in progress."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace
from typing import ClassVar

import pytest

from infra.runtime import pool as pool_module
from infra.runtime.environment import expire
from infra.runtime.pool import FunctionPool, Throttled


class StubEnvironment:
    """What release() reads of an environment (no process behind it)."""

    alive = True
    generation = 0
    last_used = 0.0


def test_expired_waiter_already_dequeued_is_throttled_not_crashed() -> None:
    """Regression: under overload the waiter's timer fired after release() had popped it;
    ``waiters.remove`` raised ValueError and the invocation became a 500 (gateway 502)."""

    async def scenario() -> BaseException | None:
        pool = FunctionPool(SimpleNamespace(logical_id="Busy"), limit=1, init_timeout=1.0)  # type: ignore[arg-type]
        pool.in_use = 1
        task = asyncio.create_task(pool.acquire(queue_wait=30.0))
        while not pool.waiters:
            await asyncio.sleep(0)
        waiter = pool.waiters.popleft()
        expire(waiter)
        try:
            await task
        except BaseException as error:
            return error
        return None

    error = asyncio.run(scenario())
    assert isinstance(error, Throttled)


def test_waiter_gets_released_environment() -> None:
    async def scenario() -> object:
        pool = FunctionPool(SimpleNamespace(logical_id="Busy"), limit=1, init_timeout=1.0)  # type: ignore[arg-type]
        pool.in_use = 1
        environment = StubEnvironment()
        pool.busy.add(environment)  # type: ignore[arg-type]
        task = asyncio.create_task(pool.acquire(queue_wait=30.0))
        while not pool.waiters:
            await asyncio.sleep(0)
        pool.release(environment, reusable=True)  # type: ignore[arg-type]
        handed, cold = await task
        assert cold is False and pool.in_use == 1
        return handed

    assert isinstance(asyncio.run(scenario()), StubEnvironment)


class GatedEnvironment:
    """An environment whose init finishes when the test says so."""

    gate: asyncio.Event
    started: ClassVar[int] = 0

    def __init__(self, definition: object, generation: int, extra_env: object) -> None:
        self.generation = generation
        self.alive = True
        self.last_used = 0.0

    async def start(self, timeout: float) -> None:
        GatedEnvironment.started += 1
        await GatedEnvironment.gate.wait()

    async def kill(self) -> None:
        self.alive = False


def _gated_pool(monkeypatch: pytest.MonkeyPatch, limit: int, max_initialising: int) -> FunctionPool:
    monkeypatch.setattr(pool_module, "Environment", GatedEnvironment)
    GatedEnvironment.gate = asyncio.Event()
    GatedEnvironment.started = 0
    return FunctionPool(SimpleNamespace(logical_id="Burst"), limit=limit, init_timeout=1.0,  # type: ignore[arg-type]
                        max_initialising=max_initialising)


def test_a_burst_starts_at_most_the_capped_cold_starts_then_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> list[bool]:
        pool = _gated_pool(monkeypatch, limit=8, max_initialising=2)
        tasks = [asyncio.create_task(pool.acquire(queue_wait=30.0)) for _ in range(5)]
        for _ in range(10):
            await asyncio.sleep(0)
        assert GatedEnvironment.started == 2 and pool.initialising == 2 and len(pool.waiters) == 3
        GatedEnvironment.gate.set()
        acquired = await asyncio.gather(*tasks)
        assert GatedEnvironment.started == 5 and pool.in_use == 5 and pool.initialising == 0
        return [cold for _, cold in acquired]

    assert asyncio.run(scenario()) == [True] * 5


def test_a_released_environment_serves_a_waiter_before_another_cold_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        pool = _gated_pool(monkeypatch, limit=8, max_initialising=1)
        warm = GatedEnvironment(None, 0, None)
        pool.in_use = 1
        pool.busy.add(warm)  # type: ignore[arg-type]
        first = asyncio.create_task(pool.acquire(queue_wait=30.0))
        second = asyncio.create_task(pool.acquire(queue_wait=30.0))
        for _ in range(10):
            await asyncio.sleep(0)
        assert GatedEnvironment.started == 1 and len(pool.waiters) == 1
        pool.release(warm, reusable=True)  # type: ignore[arg-type]
        handed, cold = await second
        assert handed is warm and cold is False
        GatedEnvironment.gate.set()
        assert (await first)[1] is True
        assert pool.in_use == 2 and pool.initialising == 0

    asyncio.run(scenario())


def test_a_waiter_cancelled_after_being_handed_a_cold_start_gives_it_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        pool = _gated_pool(monkeypatch, limit=1, max_initialising=1)
        GatedEnvironment.gate.set()
        environment, _ = await pool.acquire(queue_wait=30.0)
        waiting = asyncio.create_task(pool.acquire(queue_wait=30.0))
        while not pool.waiters:
            await asyncio.sleep(0)
        pool.release(environment, reusable=False)  # the slot and a cold start go to the waiter...
        waiting.cancel()  # ...whose client is gone before it runs again
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert pool.in_use == 0 and pool.initialising == 0

    asyncio.run(scenario())


def test_held_back_by_the_cold_start_cap_is_not_throttled_by_the_queue_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: with a 100 ms queue wait, requests behind a 1 s cold start got 429
    although the function was far below its concurrency limit (the load smoke saw 4)."""

    async def scenario() -> list[bool]:
        pool = _gated_pool(monkeypatch, limit=8, max_initialising=1)
        tasks = [asyncio.create_task(pool.acquire(queue_wait=0.01)) for _ in range(3)]
        await asyncio.sleep(0.05)
        GatedEnvironment.gate.set()
        return [cold for _, cold in await asyncio.gather(*tasks)]

    assert asyncio.run(scenario()) == [True] * 3
