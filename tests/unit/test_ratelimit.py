"""Unit tests of the rate limiter's configuration, keys and headers (the Lua bucket is
exercised against a real Redis in tests/integration/test_ratelimit.py)."""

from __future__ import annotations

import pytest
from payfn_shared.platform.config import ConfigError
from payfn_shared.platform.ratelimit import (
    RateLimitConfig,
    RateLimitDecision,
    bucket_key,
    load_ratelimit_config,
    parse_bucket_key,
)


def test_defaults_are_the_seed_limits() -> None:
    config = RateLimitConfig()
    assert [config.limit(a) for a in ("authorize", "capture", "refund")] == [1000, 1000, 500]
    assert config.period_seconds == 60.0


def test_limits_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYFN_RATELIMIT_AUTHORIZE_LIMIT", "20000")
    monkeypatch.setenv("PAYFN_RATELIMIT_PERIOD_SECONDS", "1")
    config = load_ratelimit_config()
    assert config.limit("authorize") == 20000 and config.limit("refund") == 500
    assert config.period_seconds == 1.0


@pytest.mark.parametrize("bad", [{"refund_limit": 0}, {"period_seconds": 0}])
def test_invalid_limits_are_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RateLimitConfig(**bad).validate()  # type: ignore[arg-type]


def test_unknown_action_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown rate-limited action"):
        RateLimitConfig().limit("void")


def test_bucket_keys_round_trip() -> None:
    key = bucket_key("merchant_1-a", "refund")
    assert key == "payfn:rl:{merchant_1-a}:refund"
    assert parse_bucket_key(key) == ("merchant_1-a", "refund")
    assert parse_bucket_key("payfn:rl:{m}:void") is None
    assert parse_bucket_key("payfn:cb:{kafka-publisher}") is None


def test_headers() -> None:
    allowed = RateLimitDecision("m", "authorize", True, 10, 9, 0, 6)
    refused = RateLimitDecision("m", "authorize", False, 10, 0, 7, 60)
    assert allowed.headers() == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "9"}
    assert refused.headers() == {"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "Retry-After": "7"}
