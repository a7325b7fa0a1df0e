"""Capped exponential backoff with jitter: how long to wait before retry number n.

The database's deadlock retries, the event-source poller's redeliveries and the
outage drill's client retries all wait the same way: ``initial * factor**(n-1)``,
capped at ``maximum``, times a random factor drawn from ``jitter`` so that many
clients retrying together do not arrive together (``(0, 1)`` is the AWS SDKs'
"full jitter"). It lives in the layer so functions and the infra can share it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_RANDOM = random.Random()  # noqa: S311 - backoff jitter, not security
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class Backoff:
    """Delays in seconds; ``delay(1)`` is the wait before the first retry."""

    initial: float
    maximum: float
    jitter: tuple[float, float] = (0.8, 1.2)
    factor: float = 2.0

    def __post_init__(self) -> None:
        low, high = self.jitter
        if not 0 < self.initial <= self.maximum or not 0 <= low <= high or self.factor < 1:
            raise ValueError(f"invalid backoff {self}")

    def delay(self, attempt: int, rng: random.Random = _RANDOM) -> float:
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        base = min(self.initial * self.factor ** exponent, self.maximum)
        low, high = self.jitter
        return base * rng.uniform(low, high)
