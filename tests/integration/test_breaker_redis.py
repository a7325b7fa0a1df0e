"""The Redis-shared breaker against a real redis-server, with several processes sharing one state.

Durations are shortened through the config (slow threshold 50 ms, OPEN wait 1 s)
so that the whole module runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest
import redis
from payfn_shared.platform.breaker import (
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    CallNotPermittedError,
    LocalBreakerStore,
    RedisBreakerStore,
    RedisCircuitBreaker,
)
from payfn_shared.platform.config import Settings
from payfn_shared.platform.redis_client import create_redis

from tests.integration.redis_support import private_redis

PROCESSES = 4
FAST = BreakerConfig(
    slow_call_duration_threshold_seconds=0.05,
    wait_duration_in_open_state_seconds=1.0,
    state_cache_seconds=0.2,
    redis_retry_seconds=0.3,
)
#: For tests whose calls are held open on purpose (they must not count as slow).
HELD = replace(FAST, slow_call_duration_threshold_seconds=30.0)
fork = multiprocessing.get_context("fork")


class Boom(RuntimeError):
    pass


@dataclass
class Shared:
    """What the worker processes share with the test: a start line, a gate and counters."""

    start: Barrier
    release: Event
    ran: Any  # multiprocessing.Value("i"): calls that ran the guarded function
    rejected: Any  # multiprocessing.Value("i"): CallNotPermittedError raised

    @classmethod
    def create(cls, parties: int) -> Shared:
        return cls(fork.Barrier(parties), fork.Event(), fork.Value("i", 0), fork.Value("i", 0))


def _increment(counter: Any) -> None:
    with counter.get_lock():
        counter.value += 1


def _worker(name: str, url: str, mode: str, threads: int, attempts: int, shared: Shared) -> None:
    """One process: ``threads`` threads each making ``attempts`` calls through one shared breaker."""
    import threading

    breaker = RedisCircuitBreaker(name, HELD if mode.startswith("hold-") else FAST, create_redis(url))

    def guarded() -> None:
        _increment(shared.ran)
        if mode.startswith("hold-"):
            shared.release.wait(30)
        if mode == "slow":
            time.sleep(0.06)
        if mode.endswith("fail"):
            raise Boom("dependency down")

    def thread_body() -> None:
        for _ in range(attempts):
            try:
                breaker.call(guarded)
            except CallNotPermittedError:
                _increment(shared.rejected)
            except Boom:
                pass

    shared.start.wait(30)
    workers = [threading.Thread(target=thread_body) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def start_workers(name: str, url: str, mode: str, shared: Shared, threads: int = 1,
                  attempts: int = 1) -> list[Any]:
    processes = [fork.Process(target=_worker, args=(name, url, mode, threads, attempts, shared))
                 for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    return processes


def join(processes: list[Any]) -> None:
    for process in processes:
        process.join(60)
        assert process.exitcode == 0


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def name(redis_client: redis.Redis) -> Iterator[str]:
    """A breaker name of its own per test, deleted afterwards (the shared Redis is shared)."""
    breaker_name = f"test-{uuid.uuid4().hex[:12]}"
    yield breaker_name
    redis_client.delete(RedisBreakerStore(redis_client, breaker_name, FAST).key)


@pytest.fixture
def url(settings: Settings) -> str:
    return settings.redis_url


def breaker_for(name: str, url: str) -> RedisCircuitBreaker:
    return RedisCircuitBreaker(name, FAST, create_redis(url))


def trip(breaker: RedisCircuitBreaker) -> None:
    for _ in range(FAST.minimum_number_of_calls):
        with pytest.raises(Boom):
            breaker.call(_fail)
    assert breaker.state == OPEN


def _fail() -> None:
    raise Boom("dependency down")


def test_failures_from_every_process_count_in_one_window(name: str, url: str) -> None:
    observer = breaker_for(name, url)
    shared = Shared.create(PROCESSES)
    join(start_workers(name, url, "fail", shared))
    snap = observer.snapshot()
    assert snap["storage"] == "redis"
    assert (snap["state"], snap["numberOfFailedCalls"], snap["failureRate"]) == (CLOSED, 4, -1.0)

    shared = Shared.create(PROCESSES)
    join(start_workers(name, url, "fail", shared, attempts=5))
    snap = observer.snapshot()
    assert snap["state"] == OPEN
    # the 5th failure recorded fleet-wide tripped it; results of calls already running were not counted
    assert (snap["numberOfBufferedCalls"], snap["numberOfFailedCalls"], snap["failureRate"]) == (5, 5, 100.0)
    assert snap["numberOfNotPermittedCalls"] == shared.rejected.value > 0


@pytest.mark.parametrize(("mode", "final"), [("hold-ok", CLOSED), ("hold-fail", OPEN)])
def test_half_open_admits_exactly_the_permitted_calls_fleet_wide(name: str, url: str, mode: str,
                                                                 final: str) -> None:
    observer = breaker_for(name, url)
    trip(observer)
    wait_for(lambda: observer.state == HALF_OPEN)

    threads = 3
    shared = Shared.create(PROCESSES)
    processes = start_workers(name, url, mode, shared, threads=threads)
    attempts = PROCESSES * threads
    wait_for(lambda: shared.ran.value + shared.rejected.value == attempts)
    permitted = FAST.permitted_number_of_calls_in_half_open_state
    assert (shared.ran.value, shared.rejected.value) == (permitted, attempts - permitted)
    snap = observer.snapshot()
    assert snap["state"] == HALF_OPEN and snap["numberOfNotPermittedCalls"] == attempts - permitted

    shared.release.set()
    join(processes)
    assert observer.state == final


def test_slow_calls_from_every_process_trip_it(name: str, url: str) -> None:
    observer = breaker_for(name, url)
    shared = Shared.create(PROCESSES)
    join(start_workers(name, url, "slow", shared, attempts=3))
    snap = observer.snapshot()
    assert snap["state"] == OPEN
    slow = (snap["numberOfSlowSuccessfulCalls"], snap["numberOfFailedCalls"], snap["slowCallRate"])
    assert slow == (5, 0, 100.0)


def test_admin_transitions_are_seen_by_every_process(name: str, url: str) -> None:
    admin, other = breaker_for(name, url), breaker_for(name, url)
    admin.transition_to_forced_open()
    with pytest.raises(CallNotPermittedError):
        other.call(lambda: None)
    admin.transition_to_disabled()
    assert other.call(lambda: "ran") == "ran"
    assert other.snapshot()["state"] == DISABLED
    admin.reset()
    assert other.state == CLOSED


@pytest.mark.parametrize("automatic", [True, False])
def test_lua_scripts_and_python_twin_agree(name: str, redis_client: redis.Redis, automatic: bool) -> None:
    """Random sequences of every operation give the same answers and snapshots on both stores.

    Small window and thresholds that can be met exactly, so that equality at the
    threshold, a full sliding window and every state occur many times.
    """
    config = BreakerConfig(sliding_window_size=6, minimum_number_of_calls=4, failure_rate_threshold=50,
                           slow_call_rate_threshold=50, wait_duration_in_open_state_seconds=1.0,
                           permitted_number_of_calls_in_half_open_state=2, state_cache_seconds=0,
                           automatic_transition_from_open_to_half_open_enabled=automatic,
                           max_wait_duration_in_half_open_state_seconds=0.5)
    lua, python = RedisBreakerStore(redis_client, name, config), LocalBreakerStore(config)
    rng = random.Random(f"{name}{automatic}")
    now = 1_800_000_000_000
    epochs: list[int] = []
    seen: set[tuple[str, int]] = set()
    for step in range(2000):
        op = rng.choices(["acquire", "record", "transition", "time"], [6, 8, 1, 2])[0]
        if op == "acquire":
            expected = python.acquire(now)
            assert lua.acquire(now) == expected, step
            if expected.permitted:
                epochs.append(expected.epoch)
        elif op == "record" and epochs:
            epoch, outcome = rng.choice(epochs[-3:]), rng.choices(range(4), [6, 2, 1, 1])[0]
            assert lua.record(now, epoch, outcome) == python.record(now, epoch, outcome), step
        elif op == "transition":
            target = rng.choice([CLOSED, CLOSED, DISABLED, FORCED_OPEN])
            assert lua.transition(now, target) == python.transition(now, target), step
        elif op == "time":
            now += rng.choice([1, 250, 500, 1000])  # lands exactly on the waits too
        snapshot = python.snapshot(now)
        assert lua.snapshot(now) == snapshot, step
        seen.add((snapshot.state, snapshot.buffered))
    assert {state for state, _ in seen} == {CLOSED, OPEN, HALF_OPEN, DISABLED, FORCED_OPEN}
    assert (CLOSED, config.sliding_window_size) in seen


def test_redis_down_falls_back_to_local_and_comes_back(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        breaker = RedisCircuitBreaker("fallback", FAST, create_redis(server.url))
        assert breaker.call(lambda: "ok") == "ok"
        assert breaker.snapshot()["storage"] == "redis"

        server.stop()
        for _ in range(3):  # no Redis exception leaks out of call() or snapshot()
            assert breaker.call(lambda: "ok") == "ok"
        snap = breaker.snapshot()
        assert snap["storage"] == "local-fallback" and snap["state"] == CLOSED
        with pytest.raises(CallNotPermittedError):  # the local breaker applies the same rules
            for _ in range(2 * FAST.minimum_number_of_calls):
                with contextlib.suppress(Boom):
                    breaker.call(_fail)
        assert breaker.snapshot()["storage"] == "local-fallback"

        server.start()
        wait_for(lambda: breaker.snapshot()["storage"] == "redis")
        assert breaker.state == CLOSED  # the shared state, which never saw the local failures
        assert breaker.call(lambda: "ok") == "ok"
