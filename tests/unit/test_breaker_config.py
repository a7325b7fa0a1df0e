"""Unit tests of the breaker's settings: loading from ``PAYFN_BREAKER_*``, validation, derived caps."""

from __future__ import annotations

from typing import Any

import pytest
from payfn_shared.platform.breaker import BreakerConfig, load_breaker_config
from payfn_shared.platform.config import ConfigError


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYFN_BREAKER_WAIT_DURATION_IN_OPEN_STATE_SECONDS", "1.5")
    monkeypatch.setenv("PAYFN_BREAKER_SLIDING_WINDOW_SIZE", "10")
    monkeypatch.setenv("PAYFN_BREAKER_AUTOMATIC_TRANSITION_FROM_OPEN_TO_HALF_OPEN_ENABLED", "false")
    monkeypatch.setenv("PAYFN_BREAKER_STATE_CACHE_SECONDS", "0.2")
    config = load_breaker_config()
    assert config.wait_duration_in_open_state_seconds == 1.5
    assert config.sliding_window_size == 10
    assert config.automatic_transition_from_open_to_half_open_enabled is False
    assert config.minimum_number_of_calls == 5 and config.permitted_number_of_calls_in_half_open_state == 3


@pytest.mark.parametrize("bad", [
    {"sliding_window_size": 0},
    {"failure_rate_threshold": 0},
    {"slow_call_rate_threshold": 101},
    {"wait_duration_in_open_state_seconds": 0},
    {"state_cache_seconds": -1},
])
def test_config_validation(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        BreakerConfig(**bad).validate()


def test_state_cache_never_outlives_half_the_open_wait() -> None:
    assert BreakerConfig().closed_cache_seconds == 1.0
    assert BreakerConfig(wait_duration_in_open_state_seconds=1.0).closed_cache_seconds == 0.5
