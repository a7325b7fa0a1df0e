"""Authorize throughput and latency, handler in process against the live stack.

What it measures: the AuthorizeFunction's handler (Powertools routing, validation,
idempotency claim, rate limit, the payment + outbox + idempotency transaction,
the publish through the breaker and the outbox mark) called from ``threads``
threads, each with its own database connection like concurrent Lambda execution
environments. Then the same for idempotent replays. Redis commands per authorize
come from ``INFO commandstats`` deltas: ``evalsha`` is the number of round trips
(rate limiter + breaker), the other commands are the ones those Lua scripts run
inside Redis (commandstats counts them too). Other clients of the shared Redis
add noise: run it on a quiet stack.

Profile: ONE merchant, like the seed's k6 test (200 RPS from one merchant), so the
authorize limit is raised to 10 000 000 per minute (``PAYFN_RATELIMIT_AUTHORIZE_LIMIT``)
unless already set.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any

from payfn_shared.payments.service import reset_payment_service
from payfn_shared.platform.config import PREFIX
from payfn_shared.platform.redis_client import create_redis

from infra.stack.supervisor import Supervisor
from tests.apigw import authorize_event, invoke, load_function

MERCHANT = "bench-merchant"


def _start_stack() -> Any:
    """The live stack (started if needed), exported to PAYFN_* like the test fixtures do."""
    supervisor = Supervisor()
    supervisor.up()
    for f in fields(supervisor.settings):
        os.environ[PREFIX + f.name.upper()] = str(getattr(supervisor.settings, f.name))
    return supervisor.settings


def _commandstats(client: Any) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _drive(module: Any, bodies: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    def one(body: dict[str, Any]) -> tuple[int, float]:
        started = time.perf_counter()
        reply = invoke(module, authorize_event(body))
        return reply.status, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for status, latency in pool.map(one, bodies):
            latencies.append(latency)
            statuses[status] = statuses.get(status, 0) + 1
    elapsed = time.perf_counter() - started
    return {
        "requests": len(bodies),
        "ok": statuses.get(200, 0),
        "errors": len(bodies) - statuses.get(200, 0),
        "ops_per_s": round(len(bodies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


def _body(key: str) -> dict[str, Any]:
    return {"merchantId": MERCHANT, "amount": 1999, "currency": "EUR", "idempotencyKey": key}


def run(requests: int = 2000, threads: int = 8) -> dict[str, Any]:
    os.environ.setdefault("PAYFN_RATELIMIT_AUTHORIZE_LIMIT", "10000000")
    settings = _start_stack()
    reset_payment_service()
    module = load_function("authorize")
    redis_client = create_redis(settings.redis_url)
    try:
        _drive(module, [_body(f"warm-{uuid.uuid4()}") for _ in range(100)], threads)
        keys = [f"bench-{uuid.uuid4()}" for _ in range(requests)]
        before = _commandstats(redis_client)
        new = _drive(module, [_body(k) for k in keys], threads)
        after = _commandstats(redis_client)
        delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
        delta = {name: calls for name, calls in delta.items() if calls}
        delta.pop("info", None)
        replays = _drive(module, [_body(k) for k in keys[: requests // 2]], threads)
    finally:
        redis_client.close()
        reset_payment_service()
    limit = os.environ["PAYFN_RATELIMIT_AUTHORIZE_LIMIT"]
    per_request = {name: round(calls / requests, 2) for name, calls in sorted(delta.items())}
    return {
        "profile": f"1 merchant, {threads} threads, authorize limit {limit}/period",
        "new": new,
        "replay": replays,
        "redis": {"commands_per_authorize": round(sum(delta.values()) / requests, 2), **per_request},
    }


if __name__ == "__main__":
    from tests.load.bench import render

    result = run(*(int(arg) for arg in sys.argv[1:3]))
    print(render({"authorize": result}))
