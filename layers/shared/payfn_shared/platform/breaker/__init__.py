"""Circuit breaker with Resilience4j semantics, its state shared by every process through Redis.

Laid out like Resilience4j's circuit breaker: ``config`` (settings), ``state`` (the states and
what a step answers), ``lua`` and ``twin`` (the state machine as Redis scripts and its Python
twin), ``store`` (the Redis store and the local one behind one base), ``snapshot`` (metrics),
``listeners``, ``errors``, ``facade`` (:class:`RedisCircuitBreaker`) and ``registry``
(:func:`get_breaker`). Import from here. The design (why not pybreaker alone, how the state is
kept, round trips, fallback) is in ``README.md`` next to this file.
"""

from payfn_shared.platform.breaker.config import CONFIG_PREFIX, BreakerConfig, load_breaker_config
from payfn_shared.platform.breaker.errors import CallNotPermittedError
from payfn_shared.platform.breaker.facade import ExcludeRule, RedisCircuitBreaker
from payfn_shared.platform.breaker.listeners import BreakerListener
from payfn_shared.platform.breaker.registry import get_breaker
from payfn_shared.platform.breaker.snapshot import build_snapshot
from payfn_shared.platform.breaker.state import (
    CLOSED,
    DISABLED,
    FAILURE,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    SLOW_FAILURE,
    SLOW_SUCCESS,
    STATES,
    SUCCESS,
    Answer,
    RawSnapshot,
)
from payfn_shared.platform.breaker.store import (
    KEY_PREFIX,
    STORAGE_LOCAL_FALLBACK,
    STORAGE_REDIS,
    BreakerStore,
    LocalBreakerStore,
    RedisBreakerStore,
)

__all__ = [
    "CLOSED",
    "CONFIG_PREFIX",
    "DISABLED",
    "FAILURE",
    "FORCED_OPEN",
    "HALF_OPEN",
    "KEY_PREFIX",
    "OPEN",
    "SLOW_FAILURE",
    "SLOW_SUCCESS",
    "STATES",
    "STORAGE_LOCAL_FALLBACK",
    "STORAGE_REDIS",
    "SUCCESS",
    "Answer",
    "BreakerConfig",
    "BreakerListener",
    "BreakerStore",
    "CallNotPermittedError",
    "ExcludeRule",
    "LocalBreakerStore",
    "RawSnapshot",
    "RedisBreakerStore",
    "RedisCircuitBreaker",
    "build_snapshot",
    "get_breaker",
    "load_breaker_config",
]
