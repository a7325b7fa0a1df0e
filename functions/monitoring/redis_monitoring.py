"""GET /monitoring/redis/*: rate-limit buckets, cache statistics, TTL distribution.

Thin: answers come from :class:`payfn_shared.monitoring.redis_monitor.RedisMonitor`,
the same code the redis-cache MCP server calls (peeks and SCANs only: nothing
here consumes quota or blocks Redis).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from payfn_shared.monitoring.redis_monitor import RedisMonitor
from payfn_shared.payments.api import create_app, json_response, logger

app = create_app()
monitor = RedisMonitor()


@app.get("/monitoring/redis/rate-limit")
def rate_limit() -> Response:
    return json_response(200, monitor.rate_limit(app.current_event.get_query_string_value("merchantId")))


@app.get("/monitoring/redis/rate-limit/all")
def rate_limit_all() -> Response:
    return json_response(200, monitor.rate_limit_all())


@app.get("/monitoring/redis/rate-limit/blocked")
def rate_limit_blocked() -> Response:
    return json_response(200, monitor.blocked_merchants())


@app.get("/monitoring/redis/cache-stats")
def cache_stats() -> Response:
    return json_response(200, monitor.cache_stats())


@app.get("/monitoring/redis/ttl-analysis")
def ttl_analysis() -> Response:
    return json_response(200, monitor.ttl_analysis())


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
