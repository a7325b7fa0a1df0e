"""circuit-breaker MCP server: the kafka-publisher breaker, Kafka's health, failure history.

Run: ``python -m payfn_mcp.circuit_breaker`` (stdio) or ``… --http`` (port 8101, ``--port N`` to change).
The tools call :class:`payfn_shared.monitoring.breaker_monitor.BreakerMonitor`,
the same code as ``/monitoring/circuit-breaker/*``, directly against Redis, Kafka,
Prometheus and the read-only database (no HTTP hop through the monitoring API:
the MCP server keeps working when the gateway or a function host is the problem).
"""

from __future__ import annotations

from functools import cache

from mcp.server import MCPServer
from mcp.types import CallToolResult
from payfn_shared.monitoring.breaker_monitor import BreakerMonitor
from payfn_shared.monitoring.database import DatabaseMonitor

from payfn_mcp.common import READ_ONLY, answer, serve

server = MCPServer(
    "payfn-circuit-breaker",
    instructions="Read-only view of payfn's kafka-publisher circuit breaker (Resilience4j semantics, "
    "state shared in Redis), the Kafka broker, and the breaker's history in Prometheus.",
)


@cache
def monitor() -> BreakerMonitor:
    """Built on first use, so the server starts (and lists tools) even before the stack is up."""
    return BreakerMonitor(outbox_status=DatabaseMonitor().outbox_status)


@server.tool(annotations=READ_ONLY)
def get_circuit_breaker_status() -> CallToolResult:
    """Current state of the kafka-publisher breaker (CLOSED/OPEN/HALF_OPEN/…) with its call counts,
    failure and slow-call rates (-1 below the minimum number of calls)."""
    return answer(lambda: monitor().status())


@server.tool(annotations=READ_ONLY)
def diagnose_circuit_breaker() -> CallToolResult:
    """Diagnose publishing problems: breaker state and rates, Kafka reachability and topics, stuck
    outbox events; each finding comes with a severity and a recommendation."""
    return answer(lambda: monitor().diagnose())


@server.tool(annotations=READ_ONLY)
def check_kafka_health() -> CallToolResult:
    """Is the Kafka broker reachable (metadata round trip, latency) and do payfn's topics exist?"""
    return answer(lambda: monitor().kafka_health())


@server.tool(annotations=READ_ONLY)
def analyze_failure_pattern(time_range: str = "1h") -> CallToolResult:
    """What the breaker and the API did over a time range (e.g. 30m, 1h, 24h, today; at most 7 days),
    from Prometheus: publish calls by outcome, time spent open, refused calls, HTTP 5xx by route."""
    return answer(lambda: monitor().failure_pattern(time_range))


def main() -> None:
    serve(server, "payfn_mcp.circuit_breaker", default_port=8101)


if __name__ == "__main__":
    main()
