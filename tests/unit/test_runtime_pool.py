"""FunctionPool's queue: a waiter that expires after another path already dequeued it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from infra.runtime.environment import FunctionPool, Throttled, _expire


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
        _expire(waiter)
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
