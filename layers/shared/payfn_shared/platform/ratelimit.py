"""Per-merchant, per-action rate limits: one atomic Lua token bucket per (merchant, action).

Why a token bucket: two numbers per bucket whatever the limit (O(1) checks), no
double burst at window boundaries, and an exact ``Retry-After``. Refill, decision
and write are one Lua script timed by Redis ``TIME``, so concurrent checks never
overspend a bucket. Keys ``payfn:rl:{<merchant>}:<action>`` exist only while a
bucket is not full, so the monitoring API finds recent users by ``SCAN``. Redis
errors fail open (logged once per outage, counted in
``payfn_ratelimit_fail_open_total{action}``).

Design notes: docs/PAYMENTS.md#rate-limits
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import redis
from prometheus_client import Counter

from payfn_shared.platform.config import ConfigError, load_dataclass
from payfn_shared.platform.redis_client import get_redis, register_script

logger = logging.getLogger(__name__)

ACTIONS = ("authorize", "capture", "refund")
KEY_PREFIX = "payfn:rl:"
#: Buckets read per pipelined round trip by :meth:`RateLimiter.active`.
PEEK_BATCH = 500
#: Environment prefix of :class:`RateLimitConfig` (e.g. ``PAYFN_RATELIMIT_REFUND_LIMIT``).
CONFIG_PREFIX = "PAYFN_RATELIMIT_"

FAIL_OPEN_TOTAL = Counter(
    "payfn_ratelimit_fail_open_total",
    "Rate-limit checks allowed without a decision because Redis failed",
    ["action"],
)

# KEYS[1] bucket; ARGV: capacity, period in ms, cost (1: check and consume, 0: peek).
# Returns {allowed, remaining, retry_after_ms, reset_ms}.
_LUA_BUCKET = """
local capacity = tonumber(ARGV[1])
local period_ms = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = capacity / period_ms
local stored = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(stored[1]) or capacity
local ts = tonumber(stored[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then
  allowed = 1
  if cost > 0 then
    tokens = tokens - cost
    local reset_ms = math.ceil((capacity - tokens) / rate)
    redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
    redis.call('PEXPIRE', KEYS[1], reset_ms + 1)
  end
end
local retry_ms = 0
if tokens < 1 then retry_ms = math.ceil((1 - tokens) / rate) end
return {allowed, math.floor(tokens), retry_ms, math.ceil((capacity - tokens) / rate)}
"""


@dataclass(frozen=True)
class RateLimitConfig:
    """Requests allowed per merchant and action in ``period_seconds`` (the seed's per-minute limits)."""

    ENV_PREFIX: ClassVar[str] = CONFIG_PREFIX

    authorize_limit: int = 1000
    capture_limit: int = 1000
    refund_limit: int = 500
    period_seconds: float = 60.0

    def validate(self) -> None:
        for action in ACTIONS:
            if self.limit(action) < 1:
                raise ConfigError(f"{CONFIG_PREFIX}{action.upper()}_LIMIT must be >= 1")
        if self.period_seconds <= 0:
            raise ConfigError(f"{CONFIG_PREFIX}PERIOD_SECONDS must be > 0")

    def limit(self, action: str) -> int:
        if action not in ACTIONS:
            raise ValueError(f"unknown rate-limited action {action!r} (expected one of {ACTIONS})")
        return int(getattr(self, f"{action}_limit"))


def load_ratelimit_config() -> RateLimitConfig:
    """The limits from ``PAYFN_RATELIMIT_*`` (the benchmark profile raises them)."""
    config: RateLimitConfig = load_dataclass(RateLimitConfig)
    return config


@dataclass(frozen=True)
class RateLimitDecision:
    """One bucket's answer. ``retry_after_seconds`` > 0 only when not allowed;
    ``reset_seconds`` is the time until the bucket is full again."""

    merchant_id: str
    action: str
    allowed: bool
    limit: int
    remaining: int
    retry_after_seconds: int
    reset_seconds: int
    fail_open: bool = False

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and, when refused, ``Retry-After``."""
        headers = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining)}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_seconds)
        return headers

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the monitoring API and the MCP server."""
        return {
            "merchantId": self.merchant_id,
            "action": self.action,
            "allowed": self.allowed,
            "limit": self.limit,
            "remaining": self.remaining,
            "retryAfterSeconds": self.retry_after_seconds,
            "resetSeconds": self.reset_seconds,
            "failOpen": self.fail_open,
        }


def bucket_key(merchant_id: str, action: str) -> str:
    return f"{KEY_PREFIX}{{{merchant_id}}}:{action}"


def parse_bucket_key(key: str) -> tuple[str, str] | None:
    """(merchant, action) from a bucket key, or None for a key that is not one."""
    rest = key.removeprefix(KEY_PREFIX)
    merchant, _, action = rest.rpartition(":")
    if rest == key or action not in ACTIONS or not (merchant.startswith("{") and merchant.endswith("}")):
        return None
    return merchant[1:-1], action


class RateLimiter:
    """Checks and inspects the buckets; one instance per process is enough (it is thread-safe)."""

    def __init__(self, redis_client: redis.Redis | None = None,
                 config: RateLimitConfig | None = None) -> None:
        self.redis = redis_client or get_redis()
        self.config = config or load_ratelimit_config()
        self._script = register_script(self.redis, _LUA_BUCKET)
        self._period_ms = max(1, int(self.config.period_seconds * 1000))
        self._lock = threading.Lock()
        self._failing = False
        self.fail_open_count = 0

    def _decision(self, merchant_id: str, action: str, reply: list[int]) -> RateLimitDecision:
        allowed, remaining, retry_ms, reset_ms = (int(value) for value in reply)
        return RateLimitDecision(
            merchant_id=merchant_id, action=action, allowed=bool(allowed),
            limit=self.config.limit(action), remaining=remaining,
            retry_after_seconds=math.ceil(retry_ms / 1000), reset_seconds=math.ceil(reset_ms / 1000),
        )

    def _args(self, action: str, cost: int) -> list[int]:
        return [self.config.limit(action), self._period_ms, cost]

    def check(self, merchant_id: str, action: str) -> RateLimitDecision:
        """Take one token from the merchant's bucket for ``action`` (one round trip).

        Never raises for Redis trouble: it fails open (allowed, ``fail_open=True``).
        """
        limit = self.config.limit(action)
        try:
            reply = self._script(keys=[bucket_key(merchant_id, action)], args=self._args(action, 1))
        except redis.RedisError as exc:
            with self._lock:
                self.fail_open_count += 1
                first = not self._failing
                self._failing = True
            FAIL_OPEN_TOTAL.labels(action=action).inc()
            if first:
                logger.error("rate limiter: Redis failed (%s); allowing requests unchecked (fail-open)", exc)
            return RateLimitDecision(merchant_id, action, True, limit, limit, 0, 0, fail_open=True)
        if self._failing:
            with self._lock:
                self._failing = False
            logger.warning("rate limiter: Redis answers again, limits enforced")
        return self._decision(merchant_id, action, reply)

    def peek(self, merchant_id: str) -> dict[str, RateLimitDecision]:
        """Every action's bucket for one merchant, without consuming (one pipelined round trip).

        ``allowed`` says whether a check now would pass. Redis errors propagate:
        the monitoring API must show "unknown", not a made-up full bucket.
        """
        return dict(zip(ACTIONS, self._peek_many([(merchant_id, action) for action in ACTIONS]), strict=True))

    def active(self) -> list[RateLimitDecision]:
        """Every bucket that is not full: each merchant/action with recent traffic (SCAN, never KEYS)."""
        buckets = []
        for raw in self.redis.scan_iter(match=f"{KEY_PREFIX}*", count=1000):
            parsed = parse_bucket_key(raw.decode() if isinstance(raw, bytes) else raw)
            if parsed is not None:
                buckets.append(parsed)
        return sorted(self._peek_many(buckets), key=lambda d: (d.merchant_id, d.action))

    def blocked(self) -> list[RateLimitDecision]:
        """Buckets that would refuse a request now, with their ``retry_after_seconds``."""
        return [decision for decision in self.active() if not decision.allowed]

    def _peek_many(self, buckets: list[tuple[str, str]]) -> list[RateLimitDecision]:
        """Read-only script calls, pipelined in batches (one round trip per batch)."""
        decisions = []
        for start in range(0, len(buckets), PEEK_BATCH):
            batch = buckets[start:start + PEEK_BATCH]
            pipe = self.redis.pipeline(transaction=False)
            for merchant_id, action in batch:
                self._script(keys=[bucket_key(merchant_id, action)], args=self._args(action, 0), client=pipe)
            replies = pipe.execute()
            decisions += [self._decision(m, a, reply) for (m, a), reply in zip(batch, replies, strict=True)]
        return decisions
