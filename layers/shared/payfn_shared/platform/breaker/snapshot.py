"""The breaker's metrics as the spec shows them: Resilience4j's metric names, rates derived here.

Stores answer raw counters (:class:`~payfn_shared.platform.breaker.state.RawSnapshot`); this module
turns them into the snapshot the status API, the MCP server and the metrics collectors show, so
every reader derives the rates the same way.
"""

from __future__ import annotations

from typing import Any

from payfn_shared.platform.breaker.state import RawSnapshot


def build_snapshot(raw: RawSnapshot, storage: str) -> dict[str, Any]:
    """The spec's snapshot (Resilience4j's metric names) plus where the state lives.

    Rates are -1.0 while fewer than minimumNumberOfCalls are buffered, as in Resilience4j.
    """
    enough = raw.buffered >= raw.minimum
    return {
        "state": raw.state,
        "numberOfSuccessfulCalls": raw.buffered - raw.failed,
        "numberOfFailedCalls": raw.failed,
        "numberOfSlowCalls": raw.slow,
        "numberOfSlowSuccessfulCalls": raw.slow - raw.slow_failed,
        "numberOfSlowFailedCalls": raw.slow_failed,
        "numberOfBufferedCalls": raw.buffered,
        "numberOfNotPermittedCalls": raw.not_permitted,
        "failureRate": raw.failed * 100.0 / raw.buffered if enough else -1.0,
        "slowCallRate": raw.slow * 100.0 / raw.buffered if enough else -1.0,
        "storage": storage,
    }
