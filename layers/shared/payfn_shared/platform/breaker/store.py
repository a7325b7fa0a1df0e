"""Where a breaker's state lives: one Redis hash shared by every process, or this process.

:class:`BreakerStore` is the abstract base: each method is one atomic step of the state
machine. :class:`RedisBreakerStore` runs each step as one Lua script (EVALSHA) on the hash
``payfn:cb:{<name>}`` (the braces are a cluster hash tag), so every decision is atomic
fleet-wide. :class:`LocalBreakerStore` runs the Python twin under a lock: the fallback while
Redis fails, and the store the unit tests drive with a controllable clock.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

import redis

from payfn_shared.platform.breaker import lua
from payfn_shared.platform.breaker.config import BreakerConfig
from payfn_shared.platform.breaker.state import Answer, RawSnapshot
from payfn_shared.platform.breaker.twin import BreakerRecord, StateMachine
from payfn_shared.platform.redis_client import register_script

KEY_PREFIX = "payfn:cb:"

#: Snapshot ``storage`` values.
STORAGE_REDIS = "redis"
STORAGE_LOCAL_FALLBACK = "local-fallback"


class BreakerStore(ABC):
    """Where a breaker's state lives; every method is one atomic step of the state machine."""

    storage: str

    @abstractmethod
    def acquire(self, now_ms: int) -> Answer:
        """Ask for permission to run a call."""

    @abstractmethod
    def record(self, now_ms: int, epoch: int, outcome: int) -> Answer:
        """Record the outcome of a call permitted in ``epoch``."""

    @abstractmethod
    def transition(self, now_ms: int, target: str) -> Answer:
        """Admin: move to ``target`` with fresh metrics."""

    @abstractmethod
    def snapshot(self, now_ms: int) -> RawSnapshot:
        """The current state and its counters."""


class LocalBreakerStore(BreakerStore):
    """In-process store: the Redis fallback, and the unit-testable twin of the Lua scripts."""

    def __init__(self, config: BreakerConfig, storage: str = STORAGE_LOCAL_FALLBACK) -> None:
        self.storage = storage
        self._machine = StateMachine(config)
        self._record: BreakerRecord | None = None
        self._lock = threading.Lock()

    def _current(self, now_ms: int) -> BreakerRecord:
        """The record, created CLOSED on first use (as the Lua ``load`` does for a missing hash)."""
        if self._record is None:
            self._record = self._machine.new_record(now_ms)
        return self._record

    def acquire(self, now_ms: int) -> Answer:
        with self._lock:
            return self._machine.acquire(self._current(now_ms), now_ms)

    def record(self, now_ms: int, epoch: int, outcome: int) -> Answer:
        with self._lock:
            return self._machine.record(self._current(now_ms), now_ms, epoch, outcome)

    def transition(self, now_ms: int, target: str) -> Answer:
        with self._lock:
            return self._machine.transition(self._current(now_ms), now_ms, target)

    def snapshot(self, now_ms: int) -> RawSnapshot:
        with self._lock:
            return self._machine.snapshot(self._current(now_ms), now_ms)


class RedisBreakerStore(BreakerStore):
    """The shared store: one Redis hash per breaker, one Lua script (EVALSHA) per operation."""

    storage = STORAGE_REDIS

    def __init__(self, client: redis.Redis, name: str, config: BreakerConfig) -> None:
        self.key = f"{KEY_PREFIX}{{{name}}}"
        self._acquire = register_script(client, lua.ACQUIRE)
        self._record = register_script(client, lua.RECORD)
        self._transition = register_script(client, lua.TRANSITION)
        self._snapshot = register_script(client, lua.SNAPSHOT)
        # ARGV[2..9] of every script, in the order ``lua.PRELUDE`` reads them.
        self._config_args: list[str | int | float] = [
            config.sliding_window_size,
            config.closed_minimum,
            repr(float(config.failure_rate_threshold)),
            repr(float(config.slow_call_rate_threshold)),
            int(config.wait_duration_in_open_state_seconds * 1000),
            config.permitted_number_of_calls_in_half_open_state,
            1 if config.automatic_transition_from_open_to_half_open_enabled else 0,
            int(config.max_wait_duration_in_half_open_state_seconds * 1000),
        ]

    @staticmethod
    def _answer(reply: list[Any]) -> Answer:
        """Decode a script's ``{permitted, state, epoch}`` reply."""
        return Answer(bool(reply[0]), reply[1].decode(), int(reply[2]))

    def acquire(self, now_ms: int) -> Answer:
        return self._answer(self._acquire(keys=[self.key], args=[now_ms, *self._config_args]))

    def record(self, now_ms: int, epoch: int, outcome: int) -> Answer:
        return self._answer(self._record(keys=[self.key], args=[now_ms, *self._config_args, epoch, outcome]))

    def transition(self, now_ms: int, target: str) -> Answer:
        return self._answer(self._transition(keys=[self.key], args=[now_ms, *self._config_args, target]))

    def snapshot(self, now_ms: int) -> RawSnapshot:
        reply = self._snapshot(keys=[self.key], args=[now_ms, *self._config_args])
        return RawSnapshot(reply[0].decode(), *(int(value) for value in reply[1:]))
