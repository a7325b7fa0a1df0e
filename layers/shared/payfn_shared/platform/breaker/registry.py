"""One breaker per name per process, so every caller of a name shares its cache and listeners.

:func:`get_breaker` builds the breaker on first use, configured from ``PAYFN_BREAKER_*``;
its state is shared across processes through Redis anyway (see :mod:`~payfn_shared.platform.breaker.facade`).
"""

from __future__ import annotations

import threading

from payfn_shared.platform.breaker.facade import RedisCircuitBreaker

_breakers: dict[str, RedisCircuitBreaker] = {}
_breakers_lock = threading.Lock()


def get_breaker(name: str = "kafka-publisher") -> RedisCircuitBreaker:
    """The process-wide breaker called ``name`` (configured from ``PAYFN_BREAKER_*``)."""
    with _breakers_lock:
        breaker = _breakers.get(name)
        if breaker is None:
            breaker = RedisCircuitBreaker(name)
            _breakers[name] = breaker
        return breaker
