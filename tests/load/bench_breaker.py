"""Breaker and rate-limiter overhead: µs per call and Redis commands per call.

Run ``.venv/bin/python -m tests.load.bench_breaker [--redis-url URL] [--calls N]``
(or call :func:`run` from ``make bench``). Server-side commands are counted
with ``INFO commandstats`` deltas, which include the commands a Lua script runs
(HMGET, HSET…), so point it at a Redis nobody else uses meanwhile. Round trips
are counted client-side (every ``execute_command``; nothing is pipelined here).

Rows:
- ``baseline``: the guarded function called directly (the loop's own cost);
- ``payfn breaker, CLOSED success``: :meth:`RedisCircuitBreaker.call`, warm cache;
- ``payfn breaker, local store``: the same on the in-process store (the Python overhead alone);
- ``pybreaker + CircuitRedisStorage``: the stock library, for comparison;
- ``rate limiter check``: :meth:`RateLimiter.check`.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pybreaker
import redis
from payfn_shared.platform.breaker import (
    BreakerConfig,
    LocalBreakerStore,
    RedisBreakerStore,
    RedisCircuitBreaker,
)
from payfn_shared.platform.ratelimit import RateLimitConfig, RateLimiter, bucket_key
from payfn_shared.platform.redis_client import create_redis

from infra.stack.components import Redis
from infra.stack.supervisor import Supervisor


def _commandstats(client: redis.Redis) -> Counter[str]:
    stats: dict[str, dict[str, Any]] = client.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()
                    if k != "cmdstat_info"})


class _RoundTrips:
    """Counts the commands a client sends (one round trip each on these unpipelined paths)."""

    def __init__(self, client: redis.Redis) -> None:
        self.count = 0
        send = client.execute_command

        def counting(*args: Any, **options: Any) -> Any:
            self.count += 1
            return send(*args, **options)

        client.execute_command = counting  # type: ignore[method-assign]


def _measure(client: redis.Redis, trips: _RoundTrips, calls: int, body: Callable[[], Any],
             blocks: int = 5) -> dict[str, Any]:
    """µs (median of ``blocks`` blocks, against a busy machine's noise), server commands and
    round trips per call of ``body``, after a warm-up."""
    for _ in range(min(200, calls)):
        body()
    before, trips_before = _commandstats(client), trips.count
    per_block = max(1, calls // blocks)
    timings = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(per_block):
            body()
        timings.append((time.perf_counter() - start) / per_block)
    calls = per_block * blocks
    round_trips = trips.count - trips_before
    commands = _commandstats(client) - before
    return {
        "us_per_call": round(statistics.median(timings) * 1e6, 1),
        "redis_commands_per_call": round(sum(commands.values()) / calls, 3),
        "round_trips_per_call": round(round_trips / calls, 3),
        "commands": {k: round(v / calls, 3) for k, v in sorted(commands.items())},
    }


def _noop() -> None:
    return None


def run(redis_url: str | None = None, calls: int = 5000) -> dict[str, dict[str, Any]]:
    """Measure every row, print a table, return ``{row: {us_per_call, redis_commands_per_call,
    round_trips_per_call, commands: {name: per call}}}``."""
    if redis_url is None:
        # make bench needs no running stack: bring up (or reuse) the stack's Redis.
        supervisor = Supervisor(components=[Redis])
        supervisor.up()
        redis_url = supervisor.settings.redis_url
    client = create_redis(redis_url)
    trips = _RoundTrips(client)
    name = f"bench-{uuid.uuid4().hex[:8]}"
    merchant = f"bench-{uuid.uuid4().hex[:8]}"
    config = BreakerConfig()
    breaker = RedisCircuitBreaker(name, config, client)
    local = RedisCircuitBreaker(name, config, store=LocalBreakerStore(config))
    stock = pybreaker.CircuitBreaker(
        fail_max=5, reset_timeout=30,
        state_storage=pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=name),
    )
    limiter = RateLimiter(client, RateLimitConfig(refund_limit=10 * calls, period_seconds=3600))
    rows = {
        "baseline (direct call)": lambda: _noop(),
        "payfn breaker, CLOSED success": lambda: breaker.call(_noop),
        "payfn breaker, local store": lambda: local.call(_noop),
        "pybreaker + CircuitRedisStorage": lambda: stock.call(_noop),
        "rate limiter check": lambda: limiter.check(merchant, "refund"),
    }
    results: dict[str, dict[str, Any]] = {}
    try:
        for row, body in rows.items():
            results[row] = _measure(client, trips, calls, body)
    finally:
        client.delete(RedisBreakerStore(client, name, config).key, bucket_key(merchant, "refund"),
                      *(f"{name}:pybreaker:{k}" for k in ("state", "fail_counter", "success_counter",
                                                           "opened_at")))
    print(f"{'path':<34} {'µs/call':>8} {'round trips':>12} {'server cmds':>12}  per command")
    for row, values in results.items():
        detail = " ".join(f"{k}={v:g}" for k, v in values["commands"].items())
        print(f"{row:<34} {values['us_per_call']:>8.1f} {values['round_trips_per_call']:>12.3f}"
              f" {values['redis_commands_per_call']:>12.3f}  {detail}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="default: the configured PAYFN_REDIS_* address")
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    run(args.redis_url, args.calls)


if __name__ == "__main__":
    main()
