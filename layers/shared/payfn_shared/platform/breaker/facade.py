"""The public breaker: :class:`RedisCircuitBreaker`, pybreaker's interface on Resilience4j's rules.

pybreaker's surface stays (``call``, listeners, ``exclude=``, its error family); its state
machine and Redis storage do not: they count consecutive failures and are not atomic across
processes, while the seed's Resilience4j breaker evaluates failure and slow-call *rates* over a
count-based window. So every step runs in a :class:`~payfn_shared.platform.breaker.store.BreakerStore`.

CLOSED success path: one round trip. A CLOSED/DISABLED answer is cached for at most
``closed_cache_seconds`` and grants permissions locally; the record script refreshes it. A
result counts only in the epoch that admitted its call, so results of calls a stale cache let
through are dropped. If Redis fails, the breaker runs on its local store, says ``"storage":
"local-fallback"`` and tries Redis again every ``redis_retry_seconds``. The clock (seconds,
wall time) is injectable and passed to every script. More in ``README.md`` next to this file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import pybreaker
import redis

from payfn_shared.platform.breaker.config import BreakerConfig, load_breaker_config
from payfn_shared.platform.breaker.errors import CallNotPermittedError
from payfn_shared.platform.breaker.snapshot import build_snapshot
from payfn_shared.platform.breaker.state import (
    CLOSED,
    DISABLED,
    FAILURE,
    FORCED_OPEN,
    SLOW_FAILURE,
    SLOW_SUCCESS,
    SUCCESS,
    Answer,
)
from payfn_shared.platform.breaker.store import BreakerStore, LocalBreakerStore, RedisBreakerStore
from payfn_shared.platform.redis_client import get_redis

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Permit(NamedTuple):
    """A granted permission: the store that granted it, and the epoch and state it was granted in."""

    store: BreakerStore
    epoch: int
    state: str


#: An excluded exception type, or a predicate saying whether an exception is excluded.
ExcludeRule = type[BaseException] | Callable[[BaseException], bool]


class RedisCircuitBreaker:
    """A named breaker whose state every process shares through Redis (see module docstring)."""

    def __init__(
        self,
        name: str = "kafka-publisher",
        config: BreakerConfig | None = None,
        redis_client: redis.Redis | None = None,
        *,
        store: BreakerStore | None = None,
        clock: Callable[[], float] = time.time,
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        exclude: Iterable[ExcludeRule] = (),
    ) -> None:
        """``store`` replaces the Redis store (unit tests pass a :class:`LocalBreakerStore`);
        ``clock`` returns seconds and must be comparable across processes (wall time)."""
        self.name = name
        self.config = config or load_breaker_config()
        self._primary: BreakerStore = store or RedisBreakerStore(
            redis_client or get_redis(), name, self.config)
        self._fallback = LocalBreakerStore(self.config)
        self._clock = clock
        self._listeners: list[pybreaker.CircuitBreakerListener] = list(listeners)
        self._exclude: list[ExcludeRule] = list(exclude)
        self._lock = threading.Lock()
        self._cached: Answer | None = None
        self._cached_at = 0.0
        self._observed: str | None = None
        self._retry_primary_at: float | None = None

    # -- pybreaker-style surface ---------------------------------------------------------------

    @property
    def listeners(self) -> tuple[pybreaker.CircuitBreakerListener, ...]:
        """The listeners, in the order they are called."""
        return tuple(self._listeners)

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        """Call ``listener`` on every later event."""
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        """Stop calling ``listener``."""
        with self._lock:
            self._listeners.remove(listener)

    def is_system_error(self, exc: BaseException) -> bool:
        """pybreaker's rule: an excluded exception is a business outcome, recorded as success."""
        for rule in self._exclude:
            if isinstance(rule, type):
                if isinstance(exc, rule):
                    return False
            elif rule(exc):
                return False
        return True

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` if the breaker permits it and record its outcome and duration.

        Raises :class:`CallNotPermittedError` without running ``func`` when not
        permitted; ``func``'s own exception is re-raised unchanged after recording.
        """
        permit = self._acquire()
        self._notify("before_call", func, *args, **kwargs)
        start = self._clock()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            slow = self._clock() - start >= self.config.slow_call_duration_threshold_seconds
            if self.is_system_error(exc):
                self._record(permit, SLOW_FAILURE if slow else FAILURE)
                self._notify("failure", exc)
            else:
                self._record(permit, SLOW_SUCCESS if slow else SUCCESS)
                self._notify("success")
            raise
        slow = self._clock() - start >= self.config.slow_call_duration_threshold_seconds
        self._record(permit, SLOW_SUCCESS if slow else SUCCESS)
        self._notify("success")
        return result

    # -- Resilience4j-style surface ------------------------------------------------------------

    @property
    def state(self) -> str:
        """The current state (one round trip: the snapshot script)."""
        return str(self.snapshot()["state"])

    def snapshot(self) -> dict[str, Any]:
        """The spec's snapshot of the current state's metrics, plus ``storage``."""
        now = self._clock()
        store, raw = self._run(now, lambda s: s.snapshot(int(now * 1000)))
        self._observe(store, Answer(True, raw.state, raw.epoch), now)
        return build_snapshot(raw, store.storage)

    def transition_to_disabled(self) -> None:
        """Admin: always permit, record nothing (Resilience4j transitionToDisabledState)."""
        self._admin(DISABLED)

    def transition_to_forced_open(self) -> None:
        """Admin: reject everything until another admin transition."""
        self._admin(FORCED_OPEN)

    def transition_to_closed(self) -> None:
        """Admin: CLOSED with an empty window."""
        self._admin(CLOSED)

    def reset(self) -> None:
        """Admin: Resilience4j's reset, i.e. CLOSED with fresh metrics (as transition_to_closed)."""
        self._admin(CLOSED)

    # -- internals -----------------------------------------------------------------------------

    def _admin(self, target: str) -> None:
        """Run an admin transition to ``target`` and observe its answer."""
        now = self._clock()
        store, answer = self._run(now, lambda s: s.transition(int(now * 1000), target))
        self._observe(store, answer, now)

    def _in_fallback(self, now: float) -> bool:
        """Whether Redis failed less than ``redis_retry_seconds`` ago."""
        return self._retry_primary_at is not None and now < self._retry_primary_at

    def _run(self, now: float, operation: Callable[[BreakerStore], T]) -> tuple[BreakerStore, T]:
        """Run one store operation on Redis, or on the local store while Redis is failing."""
        if not self._in_fallback(now):
            try:
                result = operation(self._primary)
            except redis.RedisError as exc:
                self._enter_fallback(now, exc)
            else:
                if self._retry_primary_at is not None:
                    self._retry_primary_at = None
                    logger.warning("circuit breaker %s: Redis answers again, shared state resumed", self.name)
                return self._primary, result
        return self._fallback, operation(self._fallback)

    def _enter_fallback(self, now: float, exc: Exception) -> None:
        """Switch to the local store until the next Redis retry, and drop the state cache."""
        if self._retry_primary_at is None:
            logger.error("circuit breaker %s: Redis failed (%s); using the local in-process breaker",
                         self.name, exc)
        self._retry_primary_at = now + self.config.redis_retry_seconds
        self._cached = None

    def _acquire(self) -> _Permit:
        """Permission from the CLOSED/DISABLED cache, else from a store; raise when not permitted."""
        now = self._clock()
        cached = self._cached
        if (cached is not None and cached.state in (CLOSED, DISABLED)
                and now - self._cached_at < self.config.closed_cache_seconds):
            return _Permit(self._primary, cached.epoch, cached.state)
        store, answer = self._run(now, lambda s: s.acquire(int(now * 1000)))
        self._observe(store, answer, now)
        if not answer.permitted:
            self._notify("call_not_permitted")
            raise CallNotPermittedError(self.name, answer.state)
        return _Permit(store, answer.epoch, answer.state)

    def _record(self, permit: _Permit, outcome: int) -> None:
        """Record where the permission came from; DISABLED records nothing (and costs nothing)."""
        if permit.state == DISABLED:
            return
        now = self._clock()
        try:
            answer = permit.store.record(int(now * 1000), permit.epoch, outcome)
        except redis.RedisError as exc:
            self._enter_fallback(now, exc)
            return
        self._observe(permit.store, answer, now)

    def _observe(self, store: BreakerStore, answer: Answer, now: float) -> None:
        """Refresh the state cache and tell listeners when this process sees a new state."""
        if store is self._primary:
            self._cached, self._cached_at = answer, now
        with self._lock:
            previous, self._observed = self._observed, answer.state
        if previous is not None and previous != answer.state:
            logger.info("circuit breaker %s: %s -> %s (%s)", self.name, previous, answer.state, store.storage)
            self._notify("state_change", previous, answer.state)

    def _notify(self, event: str, *args: Any, **kwargs: Any) -> None:
        """Call listeners; a failing listener is logged, never allowed to fail the guarded call."""
        for listener in self.listeners:
            handler = getattr(listener, event, None)
            if handler is None:
                continue
            try:
                handler(self, *args, **kwargs)
            except Exception:
                logger.exception("circuit breaker %s: listener %r failed on %s", self.name, listener, event)
