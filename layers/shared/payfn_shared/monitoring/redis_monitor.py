"""Redis reports: rate-limit buckets, cache statistics, TTL distribution of payfn's keys.

Read-only by construction on the Redis side too: the rate-limit views use
:meth:`RateLimiter.peek` / ``active`` / ``blocked`` (a cost-0 run of the bucket
script, which never writes), and key walks use ``SCAN`` with a key budget —
never ``KEYS``, which blocks a single-threaded Redis for the whole keyspace
while payments wait behind it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import redis

from payfn_shared.monitoring.config import MonitoringConfig, load_monitoring_config
from payfn_shared.payments.validation import MERCHANT_ID_RE
from payfn_shared.platform.errors import DependencyUnavailable, FieldError, ValidationFailed
from payfn_shared.platform.ratelimit import RateLimitDecision, RateLimiter
from payfn_shared.platform.redis_client import get_redis

T = TypeVar("T")
KEY_PATTERN = "payfn:*"
#: TTL buckets (upper bound in seconds, label), for keys that expire.
TTL_BUCKETS: tuple[tuple[float, str], ...] = (
    (60, "<1m"),
    (300, "1m-5m"),
    (3600, "5m-1h"),
    (86_400, "1h-24h"),
    (float("inf"), ">24h"),
)


def _usage(decision: RateLimitDecision) -> dict[str, Any]:
    """The bucket plus how much of the limit is in use now (what a person asks first)."""
    used = max(0, decision.limit - decision.remaining)
    return {**decision.as_dict(), "used": used, "usedPercent": round(used * 100.0 / decision.limit, 1)}


def redis_report(method: Callable[..., T]) -> Callable[..., T]:
    """Redis trouble → 503 SERVICE_UNAVAILABLE: a report must say "unknown", never make one up."""

    @wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except redis.RedisError as exc:
            raise DependencyUnavailable("Redis is unavailable") from exc

    return wrapper


def key_family(key: str) -> str:
    """``payfn:rl:{M}:authorize`` → ``payfn:rl``: the prefix that says which component owns a key."""
    parts = key.split(":")
    return ":".join(parts[:2]) if len(parts) > 2 else key


class RedisMonitor:
    """The Redis side of MONITORING-SERVICE."""

    def __init__(
        self,
        client: redis.Redis | None = None,
        limiter: RateLimiter | None = None,
        config: MonitoringConfig | None = None,
    ) -> None:
        self.redis = client or get_redis()
        self.limiter = limiter or RateLimiter(self.redis)
        self.config = config or load_monitoring_config()

    @redis_report
    def rate_limit(self, merchant_id: str | None) -> dict[str, Any]:
        """One merchant's buckets (authorize / capture / refund), without consuming a token."""
        if not merchant_id or not MERCHANT_ID_RE.fullmatch(merchant_id):
            raise ValidationFailed(errors=[FieldError("merchantId", "is required: 1-32 of A-Z a-z 0-9 _ -")])
        buckets = {action: _usage(decision) for action, decision in self.limiter.peek(merchant_id).items()}
        blocked = [action for action, bucket in buckets.items() if not bucket["allowed"]]
        parts = ", ".join(f"{a} {b['used']}/{b['limit']} ({b['usedPercent']}%)" for a, b in buckets.items())
        state = f"BLOCKED for {', '.join(blocked)}" if blocked else "OK"
        return {
            "summary": f"{merchant_id}: {state} - {parts}",
            "merchantId": merchant_id,
            "blocked": bool(blocked),
            "buckets": buckets,
        }

    @redis_report
    def rate_limit_all(self) -> dict[str, Any]:
        """Every bucket in use, fullest first (a full bucket has no key: idle merchants do not appear)."""
        buckets = sorted(
            (_usage(decision) for decision in self.limiter.active()), key=lambda b: -b["usedPercent"]
        )
        merchants = sorted({bucket["merchantId"] for bucket in buckets})
        top = ", ".join(f"{b['merchantId']}/{b['action']} {b['usedPercent']}%" for b in buckets[:3])
        summary = f"{len(buckets)} bucket(s) in use by {len(merchants)} merchant(s)" + (
            f"; busiest: {top}" if buckets else ""
        )
        cap = self.config.report_list_limit
        return {
            "summary": summary,
            "merchants": len(merchants),
            "count": len(buckets),
            "buckets": buckets[:cap],
            "truncated": len(buckets) > cap,
        }

    @redis_report
    def blocked_merchants(self) -> dict[str, Any]:
        """Buckets that would refuse a request now, with when each frees up."""
        blocked = [_usage(decision) for decision in self.limiter.blocked()]
        merchants = sorted({bucket["merchantId"] for bucket in blocked})
        listed = ", ".join(
            f"{b['merchantId']}/{b['action']} (retry in {b['retryAfterSeconds']} s)" for b in blocked[:5]
        )
        summary = (
            f"{len(merchants)} merchant(s) rate-limited now: {listed}"
            if blocked
            else "no merchant is rate-limited now"
        )
        return {"summary": summary, "count": len(merchants), "merchants": merchants, "buckets": blocked}

    @redis_report
    def cache_stats(self) -> dict[str, Any]:
        """INFO stats/memory/keyspace: hits, misses, hit rate, keys, memory; payfn keys by family."""
        info = self.redis.info()
        hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
        keyspace = {
            name: value for name, value in info.items() if name.startswith("db") and isinstance(value, dict)
        }
        families, scanned, complete = self._scan_families()
        hit_rate = round(hits * 100.0 / (hits + misses), 2) if hits + misses else None
        keys = sum(int(db.get("keys", 0)) for db in keyspace.values())
        summary = (
            f"Redis {info.get('redis_version')}: hit rate {hit_rate if hit_rate is not None else '-'}% "
            f"({hits} hits / {misses} misses), {keys} keys, memory {info.get('used_memory_human')}, "
            f"{info.get('connected_clients')} clients"
        )
        return {
            "summary": summary,
            "redisVersion": info.get("redis_version"),
            "hits": hits,
            "misses": misses,
            "hitRatePercent": hit_rate,
            "keys": keys,
            "expiringKeys": sum(int(db.get("expires", 0)) for db in keyspace.values()),
            "keyspace": keyspace,
            "evictedKeys": int(info.get("evicted_keys", 0)),
            "expiredKeys": int(info.get("expired_keys", 0)),
            "usedMemoryBytes": int(info.get("used_memory", 0)),
            "usedMemoryHuman": info.get("used_memory_human"),
            "maxMemoryBytes": int(info.get("maxmemory", 0)),
            "connectedClients": int(info.get("connected_clients", 0)),
            "opsPerSecond": int(info.get("instantaneous_ops_per_sec", 0)),
            "payfnKeysByFamily": families,
            "payfnKeysScanned": scanned,
            "payfnScanComplete": complete,
        }

    def _scan(self) -> tuple[list[str], bool]:
        """Up to ``ttl_scan_max_keys`` payfn keys (SCAN); the flag says whether the walk finished."""
        budget = self.config.ttl_scan_max_keys
        keys: list[str] = []
        for raw in self.redis.scan_iter(match=KEY_PATTERN, count=1000):
            if len(keys) >= budget:
                return keys, False
            keys.append(raw.decode() if isinstance(raw, bytes) else raw)
        return keys, True

    def _scan_families(self) -> tuple[dict[str, int], int, bool]:
        keys, complete = self._scan()
        return dict(Counter(key_family(key) for key in keys)), len(keys), complete

    @redis_report
    def ttl_analysis(self) -> dict[str, Any]:
        """How payfn's keys expire: a TTL histogram per key family (PTTL in one pipelined round trip)."""
        keys, complete = self._scan()
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
        ttls = pipe.execute() if keys else []
        families: dict[str, dict[str, Any]] = defaultdict(
            lambda: {
                "keys": 0,
                "noExpiry": 0,
                "buckets": dict.fromkeys((label for _, label in TTL_BUCKETS), 0),
                "minTtlSeconds": None,
                "maxTtlSeconds": None,
            }
        )
        for key, ttl_ms in zip(keys, ttls, strict=True):
            if ttl_ms == -2:  # expired between SCAN and PTTL
                continue
            family = families[key_family(key)]
            family["keys"] += 1
            if ttl_ms == -1:
                family["noExpiry"] += 1
                continue
            seconds = ttl_ms / 1000
            label = next(label for bound, label in TTL_BUCKETS if seconds < bound)
            family["buckets"][label] += 1
            family["minTtlSeconds"] = (
                seconds if family["minTtlSeconds"] is None else min(family["minTtlSeconds"], seconds)
            )
            family["maxTtlSeconds"] = (
                seconds if family["maxTtlSeconds"] is None else max(family["maxTtlSeconds"], seconds)
            )
        total = sum(f["keys"] for f in families.values())
        persistent = sum(f["noExpiry"] for f in families.values())
        shown = ", ".join(
            f"{name} {f['keys']} ({f['noExpiry']} without TTL)" for name, f in sorted(families.items())
        )
        summary = (
            f"{total} payfn key(s){'' if complete else ' (scan budget reached)'}, "
            f"{persistent} without expiry: {shown or 'none'}"
        )
        return {
            "summary": summary,
            "keys": total,
            "withoutExpiry": persistent,
            "scanComplete": complete,
            "families": dict(sorted(families.items())),
        }
