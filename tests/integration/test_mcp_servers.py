"""The three MCP servers, each driven over stdio by the SDK's own client, against the live stack.

Each test starts the server as Claude Desktop would (``python -m payfn_mcp.<name>``),
lists its tools and calls every one of them on real data written for the test.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import redis
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import CallToolResult
from payfn_shared.platform.ratelimit import RateLimitConfig, RateLimiter, bucket_key

from tests.integration.monitoring_support import Connection, RowCounter, new_merchant, seed_merchant

REPO_ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def server_env(**extra: str) -> dict[str, str]:
    """The live stack's PAYFN_* addresses (exported by the ``stack`` fixture) for the child process."""
    env = {name: value for name, value in os.environ.items() if name.startswith("PAYFN_")}
    env.update(extra)
    return env


@asynccontextmanager
async def connect(module: str, env: dict[str, str]) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", f"payfn_mcp.{module}"], env=env, cwd=str(REPO_ROOT)
    )
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as streams, ClientSession(*streams) as session:
            await session.initialize()
            yield session


def run_session(module: str, env: dict[str, str], body: Callable[[ClientSession], Awaitable[T]]) -> T:
    async def main() -> T:
        async with connect(module, env) as session:
            return await body(session)

    return asyncio.run(main())


async def tool_names(session: ClientSession) -> set[str]:
    listed = await session.list_tools()
    for tool in listed.tools:
        assert tool.description, tool.name
        assert tool.annotations is not None and tool.annotations.read_only_hint is True
    return {tool.name for tool in listed.tools}


def ok(result: CallToolResult) -> dict[str, Any]:
    """A successful answer: a human summary first, the same report as JSON text and as structured content."""
    assert not result.is_error, result.content
    report = result.structured_content
    assert isinstance(report, dict)
    assert result.content[0].text == report["summary"]
    assert '"summary"' in result.content[1].text
    return report


def test_database_query_server(db: Connection) -> None:
    seeded = seed_merchant(db)
    counter = RowCounter(db, seeded.merchant_id)
    before = counter.counts()

    async def body(session: ClientSession) -> None:
        assert await tool_names(session) == {
            "query_payments", "payment_statistics", "check_outbox_status", "reconciliation_check",
        }
        found = ok(await session.call_tool("query_payments", {"filter": f"merchant {seeded.merchant_id}"}))
        assert {p["paymentId"] for p in found["payments"]} == set(seeded.payments.values())
        refunded = ok(
            await session.call_tool(
                "query_payments", {"filter": f"refunded merchant {seeded.merchant_id} last 24h", "limit": 5}
            )
        )
        assert [p["paymentId"] for p in refunded["payments"]] == [seeded.payments["REFUNDED"]]

        stats = ok(await session.call_tool("payment_statistics", {"time_range": "24h"}))
        assert stats["byStatus"]["REFUNDED"]["count"] >= 1

        outbox = ok(await session.call_tool("check_outbox_status", {"max_age_minutes": 5}))
        assert {"backlog", "stuck", "oldestUnpublishedAgeSeconds"} <= set(outbox)

        clean = ok(await session.call_tool("reconciliation_check", {"merchant_id": seeded.merchant_id}))
        assert clean["balanced"] is True and clean["checkedPayments"] == 3

        for attack in ("' OR 1=1 --", "completed'; DROP TABLE payment; --", "merchant x' OR '1'='1"):
            result = await session.call_tool("query_payments", {"filter": attack})
            if result.is_error:
                assert result.structured_content["code"] == "VALIDATION_FAILED"
            else:
                assert result.structured_content["count"] == 0
        refused = await session.call_tool("query_payments", {"filter": "completed", "limit": 1000})
        assert refused.is_error and refused.structured_content["errors"][0]["field"] == "limit"

    run_session("database_query", server_env(), body)
    assert counter.counts() == before


def test_redis_cache_server(redis_client: redis.Redis) -> None:
    merchant = new_merchant()
    limiter = RateLimiter(redis_client, RateLimitConfig(authorize_limit=2, period_seconds=3600))
    for _ in range(2):
        limiter.check(merchant, "authorize")
    env = server_env(PAYFN_RATELIMIT_AUTHORIZE_LIMIT="2", PAYFN_RATELIMIT_PERIOD_SECONDS="3600")

    async def body(session: ClientSession) -> None:
        assert await tool_names(session) == {"check_rate_limit", "cache_stats", "list_blocked_merchants"}
        bucket = ok(await session.call_tool("check_rate_limit", {"merchant_id": merchant}))
        assert bucket["blocked"] is True and bucket["buckets"]["authorize"]["used"] == 2
        assert "BLOCKED" in bucket["summary"]
        stats = ok(await session.call_tool("cache_stats", {}))
        assert stats["keys"] >= 1 and "hit rate" in stats["summary"]
        blocked = ok(await session.call_tool("list_blocked_merchants", {}))
        assert merchant in blocked["merchants"]
        bad = await session.call_tool("check_rate_limit", {"merchant_id": "no such id!"})
        assert bad.is_error and bad.structured_content["code"] == "VALIDATION_FAILED"

    try:
        run_session("redis_cache", env, body)
    finally:
        redis_client.delete(bucket_key(merchant, "authorize"))


def test_circuit_breaker_server() -> None:
    async def body(session: ClientSession) -> None:
        assert await tool_names(session) == {
            "get_circuit_breaker_status", "diagnose_circuit_breaker", "check_kafka_health",
            "analyze_failure_pattern",
        }
        status = ok(await session.call_tool("get_circuit_breaker_status", {}))
        states = ("CLOSED", "OPEN", "HALF_OPEN", "DISABLED", "FORCED_OPEN")
        assert status["kafka-publisher"]["state"] in states
        diagnosis = ok(await session.call_tool("diagnose_circuit_breaker", {}))
        assert diagnosis["severity"] in ("ok", "warning", "critical")
        kafka = ok(await session.call_tool("check_kafka_health", {}))
        assert kafka["reachable"] is True and kafka["status"] == "UP"
        pattern = ok(await session.call_tool("analyze_failure_pattern", {"time_range": "1h"}))
        assert pattern["prometheusReachable"] is True and pattern["windowSeconds"] == 3600
        bad = await session.call_tool("analyze_failure_pattern", {"time_range": "whenever"})
        assert bad.is_error and bad.structured_content["errors"][0]["field"] == "timeRange"

    run_session("circuit_breaker", server_env(), body)
