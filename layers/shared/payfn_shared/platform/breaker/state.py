"""The breaker's states, outcome codes and the values each store operation answers.

States are plain strings (Resilience4j's names): they are what the Lua scripts keep in Redis,
what the snapshot and the status API show and what listeners receive. What each state does
lives in one place per language, the state machine (:mod:`~payfn_shared.platform.breaker.lua` and its
twin :mod:`~payfn_shared.platform.breaker.twin`), so that both can be compared step for step.
"""

from __future__ import annotations

from typing import NamedTuple

#: Counts calls in a sliding window; opens when a rate reaches its threshold.
CLOSED = "CLOSED"
#: Rejects every call until the OPEN wait has passed, then lets HALF_OPEN trial calls through.
OPEN = "OPEN"
#: Permits a fixed number of trial calls; their rates decide CLOSED or OPEN again.
HALF_OPEN = "HALF_OPEN"
#: Admin state: permits every call and records nothing.
DISABLED = "DISABLED"
#: Admin state: rejects every call until another admin transition.
FORCED_OPEN = "FORCED_OPEN"
STATES = (CLOSED, OPEN, HALF_OPEN, DISABLED, FORCED_OPEN)

#: Outcome codes stored in the window (bit 0: failure, bit 1: slow).
SUCCESS, FAILURE, SLOW_SUCCESS, SLOW_FAILURE = 0, 1, 2, 3


class Answer(NamedTuple):
    """What acquire / record / transition return: permission, and the state after the operation."""

    permitted: bool
    state: str
    epoch: int


class RawSnapshot(NamedTuple):
    """Counters of the current state's metrics, as stored (rates are derived in Python)."""

    state: str
    epoch: int
    buffered: int
    failed: int
    slow: int
    slow_failed: int
    not_permitted: int
    minimum: int
