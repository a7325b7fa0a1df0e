"""The breaker's settings: Resilience4j's (the seed's values are the defaults) plus payfn's own.

Loaded from ``PAYFN_BREAKER_*`` (e.g. ``PAYFN_BREAKER_SLIDING_WINDOW_SIZE``) by
:func:`load_breaker_config`; CI shortens the durations that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from payfn_shared.platform.config import ConfigError, load_dataclass

#: Environment prefix of :class:`BreakerConfig` (e.g. ``PAYFN_BREAKER_SLIDING_WINDOW_SIZE``).
CONFIG_PREFIX = "PAYFN_BREAKER_"


@dataclass(frozen=True)
class BreakerConfig:
    """Resilience4j settings (the seed's values are the defaults) plus payfn's own knobs.

    ``max_wait_duration_in_half_open_state_seconds`` is Resilience4j's
    ``maxWaitDurationInHalfOpenState`` (0: wait for the permitted calls forever).
    ``state_cache_seconds`` bounds how long a cached CLOSED state may grant
    permissions without asking Redis; ``redis_retry_seconds`` is how often a
    breaker running on its local fallback tries Redis again.
    """

    ENV_PREFIX: ClassVar[str] = CONFIG_PREFIX

    sliding_window_size: int = 100
    minimum_number_of_calls: int = 5
    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 50.0
    slow_call_duration_threshold_seconds: float = 5.0
    wait_duration_in_open_state_seconds: float = 30.0
    permitted_number_of_calls_in_half_open_state: int = 3
    automatic_transition_from_open_to_half_open_enabled: bool = True
    max_wait_duration_in_half_open_state_seconds: float = 0.0
    state_cache_seconds: float = 1.0
    redis_retry_seconds: float = 5.0

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a setting out of its range (``load_dataclass`` calls this)."""
        for name in ("sliding_window_size", "minimum_number_of_calls",
                     "permitted_number_of_calls_in_half_open_state"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{CONFIG_PREFIX}{name.upper()} must be >= 1")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0 < getattr(self, name) <= 100:
                raise ConfigError(f"{CONFIG_PREFIX}{name.upper()} must be in (0, 100]")
        for name in ("slow_call_duration_threshold_seconds", "wait_duration_in_open_state_seconds",
                     "redis_retry_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{CONFIG_PREFIX}{name.upper()} must be > 0")
        if self.max_wait_duration_in_half_open_state_seconds < 0:
            raise ConfigError(f"{CONFIG_PREFIX}MAX_WAIT_DURATION_IN_HALF_OPEN_STATE_SECONDS must be >= 0")
        if self.state_cache_seconds < 0:
            raise ConfigError(f"{CONFIG_PREFIX}STATE_CACHE_SECONDS must be >= 0")

    @property
    def closed_cache_seconds(self) -> float:
        """How long a cached CLOSED/DISABLED state may grant permissions locally.

        Capped at half the OPEN wait, so that a stale CLOSED cache can never admit
        a call once the fleet is HALF_OPEN (CI shortens the wait without having to
        shorten the cache too).
        """
        return min(self.state_cache_seconds, self.wait_duration_in_open_state_seconds / 2)

    @property
    def closed_minimum(self) -> int:
        """Resilience4j caps minimumNumberOfCalls at the window size."""
        return min(self.minimum_number_of_calls, self.sliding_window_size)


def load_breaker_config() -> BreakerConfig:
    """The breaker settings from ``PAYFN_BREAKER_*`` (CI shortens the durations)."""
    config: BreakerConfig = load_dataclass(BreakerConfig)
    return config
