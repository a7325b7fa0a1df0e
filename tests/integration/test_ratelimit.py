"""The token-bucket rate limiter against a real redis-server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from payfn_shared.platform.config import Settings
from payfn_shared.platform.ratelimit import RateLimitConfig, RateLimiter, bucket_key
from payfn_shared.platform.redis_client import create_redis
from prometheus_client import REGISTRY

from tests.integration.redis_support import private_redis

#: A long period: no token comes back while a test runs, so counts are exact.
HOURLY = RateLimitConfig(authorize_limit=3, capture_limit=5, refund_limit=50, period_seconds=3600)


@pytest.fixture
def merchant(redis_client: redis.Redis) -> Iterator[str]:
    """A merchant id of its own per test; its buckets are deleted afterwards."""
    merchant_id = f"test-{uuid.uuid4().hex[:12]}"
    yield merchant_id
    redis_client.delete(*(bucket_key(merchant_id, action) for action in ("authorize", "capture", "refund")))


@pytest.fixture
def limiter(redis_client: redis.Redis) -> RateLimiter:
    return RateLimiter(redis_client, HOURLY)


def test_limit_reached_is_refused_with_retry_after(limiter: RateLimiter, merchant: str) -> None:
    decisions = [limiter.check(merchant, "authorize") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    refused = decisions[-1]
    assert refused.limit == 3 and not refused.fail_open
    assert 0 < refused.retry_after_seconds <= 1200  # one token per 1200 s
    assert refused.headers() == {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0",
                                 "Retry-After": str(refused.retry_after_seconds)}
    assert "Retry-After" not in decisions[0].headers()


def test_buckets_are_per_merchant_and_per_action(limiter: RateLimiter, merchant: str,
                                                 redis_client: redis.Redis) -> None:
    other = f"{merchant}-other"
    try:
        for _ in range(3):
            limiter.check(merchant, "authorize")
        assert not limiter.check(merchant, "authorize").allowed
        assert limiter.check(merchant, "capture").remaining == 4
        assert limiter.check(other, "authorize").remaining == 2
    finally:
        redis_client.delete(bucket_key(other, "authorize"))


def test_concurrent_checks_never_overspend(settings: Settings, merchant: str) -> None:
    limiter = RateLimiter(create_redis(settings.redis_url), HOURLY)
    with ThreadPoolExecutor(max_workers=32) as pool:
        decisions = list(pool.map(lambda _: limiter.check(merchant, "refund"), range(200)))
    assert sum(d.allowed for d in decisions) == 50
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(50))


def test_peek_reads_every_action_without_consuming(limiter: RateLimiter, merchant: str) -> None:
    limiter.check(merchant, "capture")
    first, second = limiter.peek(merchant), limiter.peek(merchant)
    assert first == second
    assert set(first) == {"authorize", "capture", "refund"}
    assert first["capture"].remaining == 4 and first["capture"].allowed
    assert first["authorize"].remaining == 3 and first["refund"].remaining == 50
    assert limiter.check(merchant, "capture").remaining == 3


def test_blocked_lists_exhausted_buckets_found_by_scan(limiter: RateLimiter, merchant: str) -> None:
    for _ in range(4):
        limiter.check(merchant, "authorize")
    limiter.check(merchant, "capture")
    mine = [d for d in limiter.active() if d.merchant_id == merchant]
    assert [(d.action, d.allowed) for d in mine] == [("authorize", False), ("capture", True)]
    blocked = [d for d in limiter.blocked() if d.merchant_id == merchant]
    assert [(d.action, d.retry_after_seconds > 0) for d in blocked] == [("authorize", True)]
    assert blocked[0].as_dict()["merchantId"] == merchant


def test_tokens_come_back_and_full_buckets_expire(redis_client: redis.Redis, merchant: str) -> None:
    limiter = RateLimiter(redis_client, RateLimitConfig(authorize_limit=5, period_seconds=0.5))
    while limiter.check(merchant, "authorize").allowed:
        pass
    assert 0 < redis_client.pttl(bucket_key(merchant, "authorize")) <= 501
    time.sleep(0.15)  # one token per 100 ms
    assert limiter.check(merchant, "authorize").allowed


def test_redis_down_fails_open_logged_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with private_redis(tmp_path) as server:
        limiter = RateLimiter(create_redis(server.url), HOURLY)
        assert not limiter.check("m1", "refund").fail_open
        server.stop()
        before = REGISTRY.get_sample_value("payfn_ratelimit_fail_open_total", {"action": "refund"}) or 0.0
        decisions = [limiter.check("m1", "refund") for _ in range(3)]
        assert all(d.allowed and d.fail_open for d in decisions)
        assert limiter.fail_open_count == 3
        after = REGISTRY.get_sample_value("payfn_ratelimit_fail_open_total", {"action": "refund"})
        assert after == before + 3
        assert sum("fail-open" in record.getMessage() for record in caplog.records) == 1
