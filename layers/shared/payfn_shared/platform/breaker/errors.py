"""The error a caller sees when the breaker rejects a call without running it.

It is a :class:`pybreaker.CircuitBreakerError`, so code written against pybreaker's error
family (the library the spec names) catches it unchanged.
"""

from __future__ import annotations

import pybreaker


class CallNotPermittedError(pybreaker.CircuitBreakerError):
    """The breaker is OPEN / FORCED_OPEN, or HALF_OPEN with every trial permit taken."""

    def __init__(self, name: str, state: str) -> None:
        super().__init__(f"circuit breaker {name!r} is {state} and does not permit further calls")
        self.name = name
        self.state = state
