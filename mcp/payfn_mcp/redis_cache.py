"""redis-cache MCP server: rate-limit buckets, blocked merchants, Redis cache statistics.

Run: ``python -m payfn_mcp.redis_cache`` (stdio) or ``… --http`` (port 8103, ``--port N`` to change).
The tools call :class:`payfn_shared.monitoring.redis_monitor.RedisMonitor`, the
same code as ``/monitoring/redis/*``: bucket peeks never consume quota and key
walks use SCAN, never KEYS.
"""

from __future__ import annotations

from functools import cache

from mcp.server import MCPServer
from mcp.types import CallToolResult
from payfn_shared.monitoring.redis_monitor import RedisMonitor

from payfn_mcp.common import READ_ONLY, answer, serve

server = MCPServer(
    "payfn-redis-cache",
    instructions="Read-only view of payfn's Redis: per-merchant rate-limit buckets (authorize, capture, "
    "refund), merchants rate-limited right now, and cache statistics.",
)


@cache
def monitor() -> RedisMonitor:
    """Built on first use, so the server starts (and lists tools) even before the stack is up."""
    return RedisMonitor()


@server.tool(annotations=READ_ONLY)
def check_rate_limit(merchant_id: str) -> CallToolResult:
    """A merchant's rate-limit buckets: used / limit per action, remaining, whether a request would
    pass now, and when the bucket is full again. Does not consume quota."""
    return answer(lambda: monitor().rate_limit(merchant_id))


@server.tool(annotations=READ_ONLY)
def cache_stats() -> CallToolResult:
    """Redis statistics: hit rate (hits/misses), keys, memory, clients, and payfn keys by family."""
    return answer(lambda: monitor().cache_stats())


@server.tool(annotations=READ_ONLY)
def list_blocked_merchants() -> CallToolResult:
    """Merchants whose rate limit refuses requests right now, per action, with retry-after seconds."""
    return answer(lambda: monitor().blocked_merchants())


def main() -> None:
    serve(server, "payfn_mcp.redis_cache", default_port=8103)


if __name__ == "__main__":
    main()
