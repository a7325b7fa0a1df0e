"""Unit tests of the breaker's state machine on its in-process store (no Redis server).

The Lua twin of the same machine is checked against this one in
tests/integration/test_breaker_redis.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pybreaker
import pytest
import redis
from payfn_shared.platform.breaker import (
    CLOSED,
    DISABLED,
    FAILURE,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    SUCCESS,
    Answer,
    BreakerConfig,
    BreakerListener,
    CallNotPermittedError,
    LocalBreakerStore,
    RawSnapshot,
    RedisCircuitBreaker,
)

SNAPSHOT_KEYS = {
    "state", "numberOfSuccessfulCalls", "numberOfFailedCalls", "numberOfSlowCalls",
    "numberOfSlowSuccessfulCalls", "numberOfSlowFailedCalls", "numberOfBufferedCalls",
    "numberOfNotPermittedCalls", "failureRate", "slowCallRate", "storage",
}


class FakeClock:
    """Seconds, moved by the test (and by slow calls)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(LocalBreakerStore):
    """A local store that counts operations and can be made to fail like an unreachable Redis."""

    def __init__(self, config: BreakerConfig) -> None:
        super().__init__(config, storage="primary")
        self.calls: list[str] = []
        self.down = False

    def _op(self, name: str) -> None:
        if self.down:
            raise redis.ConnectionError("connection refused")
        self.calls.append(name)

    def acquire(self, now_ms: int) -> Answer:
        self._op("acquire")
        return super().acquire(now_ms)

    def record(self, now_ms: int, epoch: int, outcome: int) -> Answer:
        self._op("record")
        return super().record(now_ms, epoch, outcome)

    def transition(self, now_ms: int, target: str) -> Answer:
        self._op("transition")
        return super().transition(now_ms, target)

    def snapshot(self, now_ms: int) -> RawSnapshot:
        self._op("snapshot")
        return super().snapshot(now_ms)


class Recorder(BreakerListener):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def before_call(self, cb: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.events.append(("before_call",))

    def success(self, cb: Any) -> None:
        self.events.append(("success",))

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.events.append(("failure", type(exc).__name__))

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.events.append(("state_change", old_state, new_state))

    def call_not_permitted(self, cb: Any) -> None:
        self.events.append(("not_permitted",))

    def transitions(self) -> list[tuple[Any, ...]]:
        return [e[1:] for e in self.events if e[0] == "state_change"]


class Boom(RuntimeError):
    pass


def fail() -> None:
    raise Boom("dependency down")


def ok() -> str:
    return "ok"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config() -> BreakerConfig:
    return BreakerConfig()


@pytest.fixture
def store(config: BreakerConfig) -> CountingStore:
    return CountingStore(config)


@pytest.fixture
def breaker(config: BreakerConfig, store: CountingStore, clock: FakeClock) -> RedisCircuitBreaker:
    return RedisCircuitBreaker("test", config, store=store, clock=clock)


def run(breaker: RedisCircuitBreaker, func: Callable[[], Any], times: int = 1) -> None:
    """Call ``times`` times, swallowing the function's own failures (not the breaker's)."""
    for _ in range(times):
        with contextlib.suppress(Boom):
            breaker.call(func)


def slow(clock: FakeClock, seconds: float, then: Callable[[], Any] = ok) -> Callable[[], Any]:
    def call() -> Any:
        clock.advance(seconds)
        return then()
    return call


def trip(breaker: RedisCircuitBreaker) -> None:
    run(breaker, fail, 5)
    assert breaker.state == OPEN


def test_snapshot_has_exactly_the_spec_keys_and_starts_closed(breaker: RedisCircuitBreaker) -> None:
    snap = breaker.snapshot()
    assert set(snap) == SNAPSHOT_KEYS
    assert snap["state"] == CLOSED
    assert snap["storage"] == "primary"
    assert snap["failureRate"] == snap["slowCallRate"] == -1.0


def test_below_minimum_calls_stays_closed_with_rates_minus_one(breaker: RedisCircuitBreaker) -> None:
    run(breaker, fail, 4)
    snap = breaker.snapshot()
    assert snap["state"] == CLOSED
    assert snap["numberOfFailedCalls"] == snap["numberOfBufferedCalls"] == 4
    assert snap["failureRate"] == -1.0 and snap["slowCallRate"] == -1.0


def test_opens_when_failure_rate_reaches_threshold(breaker: RedisCircuitBreaker) -> None:
    run(breaker, ok, 3)
    run(breaker, fail, 2)
    snap = breaker.snapshot()
    assert snap["state"] == CLOSED and snap["failureRate"] == 40.0
    run(breaker, fail)
    snap = breaker.snapshot()
    assert snap["state"] == OPEN
    assert snap["failureRate"] == 50.0
    assert (snap["numberOfSuccessfulCalls"], snap["numberOfFailedCalls"]) == (3, 3)


def test_opens_when_slow_call_rate_reaches_threshold(breaker: RedisCircuitBreaker, clock: FakeClock) -> None:
    run(breaker, ok, 2)
    run(breaker, slow(clock, 5.0), 2)  # exactly the threshold counts as slow
    run(breaker, slow(clock, 6.0, fail))
    snap = breaker.snapshot()
    assert snap["state"] == OPEN
    assert snap["numberOfSlowCalls"] == 3
    assert snap["numberOfSlowSuccessfulCalls"] == 2 and snap["numberOfSlowFailedCalls"] == 1
    assert snap["slowCallRate"] == 60.0 and snap["failureRate"] == 20.0


def test_just_below_slow_threshold_is_not_slow(breaker: RedisCircuitBreaker, clock: FakeClock) -> None:
    run(breaker, slow(clock, 4.999), 5)
    snap = breaker.snapshot()
    assert snap["state"] == CLOSED and snap["numberOfSlowCalls"] == 0 and snap["slowCallRate"] == 0.0


def test_open_rejects_and_counts_not_permitted(breaker: RedisCircuitBreaker) -> None:
    trip(breaker)
    calls = []
    for _ in range(3):
        with pytest.raises(CallNotPermittedError) as info:
            breaker.call(calls.append, 1)
        assert isinstance(info.value, pybreaker.CircuitBreakerError)
        assert info.value.state == OPEN
    assert calls == []
    snap = breaker.snapshot()
    assert snap["numberOfNotPermittedCalls"] == 3
    assert snap["numberOfBufferedCalls"] == 5  # OPEN keeps the metrics that tripped it


def test_open_to_half_open_after_wait(breaker: RedisCircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(29.999)
    assert breaker.state == OPEN
    clock.advance(0.001)
    snap = breaker.snapshot()
    assert snap["state"] == HALF_OPEN
    assert snap["numberOfBufferedCalls"] == 0 and snap["failureRate"] == -1.0


def test_without_automatic_transition_the_next_call_moves_to_half_open(clock: FakeClock) -> None:
    config = BreakerConfig(automatic_transition_from_open_to_half_open_enabled=False)
    breaker = RedisCircuitBreaker("manual", config, store=LocalBreakerStore(config), clock=clock)
    trip(breaker)
    clock.advance(31)
    assert breaker.state == OPEN
    assert breaker.call(ok) == "ok"
    assert breaker.state == HALF_OPEN


def test_half_open_permits_exactly_the_permitted_number(config: BreakerConfig) -> None:
    store = LocalBreakerStore(config)
    now = 1_000_000_000
    for _ in range(5):
        answer = store.acquire(now)
        store.record(now, answer.epoch, FAILURE)
    now += 30_000
    answers = [store.acquire(now) for _ in range(5)]
    assert [a.permitted for a in answers] == [True, True, True, False, False]
    assert {a.state for a in answers} == {HALF_OPEN}
    assert store.snapshot(now).not_permitted == 2


def test_half_open_successes_close_with_fresh_metrics(breaker: RedisCircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(30)
    run(breaker, ok, 2)
    assert breaker.state == HALF_OPEN
    run(breaker, ok)
    snap = breaker.snapshot()
    assert snap["state"] == CLOSED and snap["numberOfBufferedCalls"] == 0


@pytest.mark.parametrize(("outcomes", "final"), [
    ((fail, fail, fail), OPEN),
    ((ok, fail, fail), OPEN),
    ((ok, ok, fail), CLOSED),  # 33 % < 50 %: Resilience4j closes
])
def test_half_open_evaluates_the_rate_after_the_permitted_calls(
    breaker: RedisCircuitBreaker, clock: FakeClock, outcomes: tuple[Callable[[], Any], ...], final: str,
) -> None:
    trip(breaker)
    clock.advance(30)
    for func in outcomes[:-1]:
        run(breaker, func)
        assert breaker.state == HALF_OPEN
    run(breaker, outcomes[-1])
    assert breaker.state == final


def test_reopened_breaker_waits_again(breaker: RedisCircuitBreaker, clock: FakeClock) -> None:
    trip(breaker)
    clock.advance(30)
    run(breaker, fail, 3)
    assert breaker.state == OPEN
    clock.advance(29)
    with pytest.raises(CallNotPermittedError):
        breaker.call(ok)
    clock.advance(1)
    assert breaker.state == HALF_OPEN


def test_max_wait_in_half_open_reopens(clock: FakeClock) -> None:
    config = BreakerConfig(max_wait_duration_in_half_open_state_seconds=10)
    store = LocalBreakerStore(config)
    breaker = RedisCircuitBreaker("stuck", config, store=store, clock=clock)
    trip(breaker)
    clock.advance(30)
    store.acquire(int(clock() * 1000))  # a permit whose call never reports back
    assert breaker.state == HALF_OPEN
    clock.advance(10)
    assert breaker.state == OPEN


def test_window_slides_over_the_last_100_calls(breaker: RedisCircuitBreaker) -> None:
    run(breaker, ok, 60)
    run(breaker, fail, 40)
    snap = breaker.snapshot()
    assert (snap["numberOfBufferedCalls"], snap["failureRate"], snap["state"]) == (100, 40.0, CLOSED)
    run(breaker, fail, 9)  # each evicts the oldest success
    snap = breaker.snapshot()
    assert (snap["numberOfBufferedCalls"], snap["numberOfFailedCalls"], snap["state"]) == (100, 49, CLOSED)
    run(breaker, fail)
    snap = breaker.snapshot()
    assert (snap["numberOfSuccessfulCalls"], snap["numberOfFailedCalls"], snap["state"]) == (50, 50, OPEN)


def test_evicted_slow_failures_leave_every_counter(clock: FakeClock) -> None:
    small = BreakerConfig(sliding_window_size=4, minimum_number_of_calls=4, failure_rate_threshold=100,
                          slow_call_rate_threshold=100)
    breaker = RedisCircuitBreaker("small", small, store=LocalBreakerStore(small), clock=clock)
    run(breaker, slow(clock, 5, fail))
    run(breaker, ok, 4)
    snap = breaker.snapshot()
    assert snap["numberOfBufferedCalls"] == 4 and snap["numberOfSuccessfulCalls"] == 4
    assert snap["numberOfSlowCalls"] == snap["numberOfSlowFailedCalls"] == snap["numberOfFailedCalls"] == 0


def test_disabled_permits_everything_and_records_nothing(breaker: RedisCircuitBreaker,
                                                         store: CountingStore) -> None:
    breaker.transition_to_disabled()
    store.calls.clear()
    run(breaker, fail, 20)
    snap = breaker.snapshot()
    assert snap["state"] == DISABLED and snap["numberOfBufferedCalls"] == 0
    assert store.calls == ["snapshot"]  # the cached DISABLED state answered every call locally


def test_forced_open_rejects_and_never_half_opens(breaker: RedisCircuitBreaker, clock: FakeClock) -> None:
    breaker.transition_to_forced_open()
    with pytest.raises(CallNotPermittedError) as info:
        breaker.call(ok)
    assert info.value.state == FORCED_OPEN
    clock.advance(3600)
    snap = breaker.snapshot()
    assert snap["state"] == FORCED_OPEN and snap["numberOfNotPermittedCalls"] == 1


@pytest.mark.parametrize("admin", ["reset", "transition_to_closed"])
def test_reset_and_transition_to_closed_give_fresh_closed(breaker: RedisCircuitBreaker, admin: str) -> None:
    trip(breaker)
    getattr(breaker, admin)()
    snap = breaker.snapshot()
    assert snap["state"] == CLOSED and snap["numberOfBufferedCalls"] == 0
    assert snap["numberOfNotPermittedCalls"] == 0
    assert breaker.call(ok) == "ok"


def test_result_of_a_call_admitted_in_an_older_state_is_not_counted(config: BreakerConfig) -> None:
    store = LocalBreakerStore(config)
    permit = store.acquire(1000)
    store.transition(1000, FORCED_OPEN)
    store.transition(1000, CLOSED)
    store.record(1000, permit.epoch, FAILURE)
    assert store.snapshot(1000).buffered == 0
    fresh = store.acquire(1000)
    store.record(1000, fresh.epoch, SUCCESS)
    assert store.snapshot(1000).buffered == 1


def test_closed_success_path_is_one_store_operation(breaker: RedisCircuitBreaker, store: CountingStore,
                                                    clock: FakeClock) -> None:
    breaker.call(ok)
    store.calls.clear()
    for _ in range(10):
        breaker.call(ok)
    assert store.calls == ["record"] * 10
    clock.advance(breaker.config.closed_cache_seconds)
    store.calls.clear()
    breaker.call(ok)
    assert store.calls == ["acquire", "record"]


def test_listeners_see_calls_transitions_and_rejections(breaker: RedisCircuitBreaker,
                                                        clock: FakeClock) -> None:
    recorder = Recorder()
    breaker.add_listener(recorder)
    run(breaker, ok)
    run(breaker, fail, 4)  # 4 of 5 failed: opens
    with pytest.raises(CallNotPermittedError):
        breaker.call(ok)
    clock.advance(30)
    run(breaker, ok, 3)
    assert recorder.events[:4] == [("before_call",), ("success",), ("before_call",), ("failure", "Boom")]
    assert recorder.events.count(("not_permitted",)) == 1
    assert recorder.transitions() == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    breaker.remove_listener(recorder)
    assert breaker.listeners == ()


def test_a_failing_listener_never_fails_the_call(breaker: RedisCircuitBreaker) -> None:
    class Broken(pybreaker.CircuitBreakerListener):
        def success(self, cb: Any) -> None:
            raise ValueError("listener bug")

    breaker.add_listener(Broken())
    assert breaker.call(ok) == "ok"


def test_excluded_exceptions_count_as_success_and_propagate(config: BreakerConfig, clock: FakeClock) -> None:
    breaker = RedisCircuitBreaker("biz", config, store=LocalBreakerStore(config), clock=clock,
                                  exclude=[KeyError, lambda exc: "business" in str(exc)])
    for exc in (KeyError("x"), Boom("business rule")):
        def raise_it(exc: BaseException = exc) -> None:
            raise exc
        for _ in range(3):
            with pytest.raises(type(exc)):
                breaker.call(raise_it)
    snap = breaker.snapshot()
    assert snap["state"] == CLOSED and snap["numberOfSuccessfulCalls"] == 6


def test_store_failure_falls_back_to_local_and_returns(breaker: RedisCircuitBreaker, store: CountingStore,
                                                       clock: FakeClock) -> None:
    breaker.call(ok)
    store.down = True
    clock.advance(breaker.config.closed_cache_seconds)
    assert breaker.call(ok) == "ok"
    assert breaker.snapshot()["storage"] == "local-fallback"
    run(breaker, fail, 4)
    assert breaker.state == OPEN  # the local breaker applies the same rules
    store.down = False
    clock.advance(breaker.config.redis_retry_seconds)
    snap = breaker.snapshot()
    assert snap["storage"] == "primary" and snap["state"] == CLOSED

