"""The Python twin of :mod:`payfn_shared.platform.breaker.lua`: the same state machine, step for step.

:class:`BreakerRecord` mirrors the Redis hash (the Lua table ``c``) and every method of
:class:`StateMachine` mirrors the Lua function or script body of the same name, so the
local store (:class:`~payfn_shared.platform.breaker.store.LocalBreakerStore`, the fallback while Redis
fails and the store of the unit tests) decides exactly as the shared one does.
``tests/integration/test_breaker_redis.py`` runs both on random sequences and compares them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from payfn_shared.platform.breaker.config import BreakerConfig
from payfn_shared.platform.breaker.state import CLOSED, DISABLED, HALF_OPEN, OPEN, Answer, RawSnapshot


@dataclass
class BreakerRecord:
    """The Python twin of the Redis hash (same fields as the Lua table ``c``)."""

    state: str
    epoch: int
    entered_at: int
    size: int = 0
    minimum: int = 0
    head: int = 0
    buffered: int = 0
    failed: int = 0
    slow: int = 0
    slow_failed: int = 0
    not_permitted: int = 0
    half_open_issued: int = 0
    ring: list[int] = field(default_factory=list)


class StateMachine:
    """The Python twin of ``lua.PRELUDE`` and the four script bodies, step for step."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.wait_ms = int(config.wait_duration_in_open_state_seconds * 1000)
        self.half_open_max_wait_ms = int(config.max_wait_duration_in_half_open_state_seconds * 1000)

    def new_record(self, now_ms: int) -> BreakerRecord:
        """A fresh CLOSED record (Lua: ``load`` of a missing hash)."""
        record = BreakerRecord(state=CLOSED, epoch=now_ms, entered_at=now_ms)
        self._reset_metrics(record, self.config.sliding_window_size, self.config.closed_minimum)
        return record

    @staticmethod
    def _reset_metrics(record: BreakerRecord, size: int, minimum: int) -> None:
        """An empty window of ``size`` calls that decides after ``minimum`` (Lua: ``reset_metrics``)."""
        record.size, record.minimum = size, minimum
        record.head = record.buffered = record.failed = record.slow = record.slow_failed = 0
        record.not_permitted = record.half_open_issued = 0
        record.ring = []

    def _enter(self, record: BreakerRecord, state: str, now_ms: int, keep_metrics: bool) -> None:
        """Move to ``state`` in a new epoch (Lua: ``enter``)."""
        record.state, record.epoch, record.entered_at = state, record.epoch + 1, now_ms
        if keep_metrics:
            return
        if state == HALF_OPEN:
            permitted = self.config.permitted_number_of_calls_in_half_open_state
            self._reset_metrics(record, permitted, permitted)
        else:
            self._reset_metrics(record, self.config.sliding_window_size, self.config.closed_minimum)

    def _advance(self, record: BreakerRecord, now_ms: int, acquiring: bool) -> None:
        """The time-driven transitions: OPEN → HALF_OPEN, HALF_OPEN → OPEN (Lua: ``advance``)."""
        automatic = self.config.automatic_transition_from_open_to_half_open_enabled
        if record.state == OPEN and (acquiring or automatic) and now_ms - record.entered_at >= self.wait_ms:
            self._enter(record, HALF_OPEN, now_ms, keep_metrics=False)
        elif (record.state == HALF_OPEN and self.half_open_max_wait_ms > 0
              and now_ms - record.entered_at >= self.half_open_max_wait_ms):
            self._enter(record, OPEN, now_ms, keep_metrics=True)

    @staticmethod
    def _push(record: BreakerRecord, code: int) -> None:
        """Add an outcome to the ring, evicting the oldest when full (Lua: ``push``)."""
        index = record.head
        if record.buffered == record.size:
            old = record.ring[index]
            record.failed -= old % 2
            record.slow -= int(old >= 2)
            record.slow_failed -= int(old == 3)
            record.ring[index] = code
        else:
            record.buffered += 1
            record.ring.append(code)
        record.head = (index + 1) % record.size
        record.failed += code % 2
        record.slow += int(code >= 2)
        record.slow_failed += int(code == 3)

    def _exceeded(self, record: BreakerRecord) -> bool | None:
        """None below the minimum, else whether a rate reached its threshold (Lua: ``exceeded``)."""
        if record.buffered < record.minimum:
            return None
        return (record.failed * 100 >= self.config.failure_rate_threshold * record.buffered
                or record.slow * 100 >= self.config.slow_call_rate_threshold * record.buffered)

    def acquire(self, record: BreakerRecord, now_ms: int) -> Answer:
        """Permit a call or count it as not permitted (Lua: ``ACQUIRE``)."""
        self._advance(record, now_ms, acquiring=True)
        permitted = record.state in (CLOSED, DISABLED)
        if not permitted and record.state == HALF_OPEN and record.half_open_issued < record.size:
            record.half_open_issued += 1
            permitted = True
        elif not permitted:
            record.not_permitted += 1
        return Answer(permitted, record.state, record.epoch)

    def record(self, record: BreakerRecord, now_ms: int, epoch: int, outcome: int) -> Answer:
        """Count an outcome admitted in ``epoch`` and trip or close on it (Lua: ``RECORD``)."""
        self._advance(record, now_ms, acquiring=False)
        if record.epoch == epoch and record.state in (CLOSED, HALF_OPEN):
            self._push(record, outcome)
            over = self._exceeded(record)
            if over:
                self._enter(record, OPEN, now_ms, keep_metrics=True)
            elif over is False and record.state == HALF_OPEN:
                self._enter(record, CLOSED, now_ms, keep_metrics=False)
        return Answer(True, record.state, record.epoch)

    def transition(self, record: BreakerRecord, now_ms: int, target: str) -> Answer:
        """Admin: enter ``target`` with fresh metrics (Lua: ``TRANSITION``)."""
        self._enter(record, target, now_ms, keep_metrics=False)
        return Answer(True, record.state, record.epoch)

    def snapshot(self, record: BreakerRecord, now_ms: int) -> RawSnapshot:
        """The current state's counters, after any due time-driven transition (Lua: ``SNAPSHOT``)."""
        self._advance(record, now_ms, acquiring=False)
        return RawSnapshot(record.state, record.epoch, record.buffered, record.failed, record.slow,
                           record.slow_failed, record.not_permitted, record.minimum)
