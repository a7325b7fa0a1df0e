"""Listeners: pybreaker's listener interface plus a not-permitted event.

A breaker calls ``before_call``, ``success``, ``failure``, ``state_change`` and
``call_not_permitted`` on each listener it holds; a failing listener is logged and never
fails the guarded call (see :class:`~payfn_shared.platform.breaker.facade.RedisCircuitBreaker`).
"""

from __future__ import annotations

from typing import Any

import pybreaker


class BreakerListener(pybreaker.CircuitBreakerListener):
    """pybreaker's listener, plus a not-permitted event.

    ``state_change`` receives Resilience4j state *names* (``"OPEN"``…) rather than
    pybreaker's state objects, which only know three states. It fires in each
    process when that process observes a new state (its own transition or
    another process's), like pybreaker's Redis-backed breakers do.
    """

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        """Called with (breaker, previous state name, new state name)."""

    def call_not_permitted(self, cb: Any) -> None:
        """Called when a call is rejected without running."""
