"""database-query MCP server: payments, statistics, the outbox and reconciliation, read-only.

Run: ``python -m payfn_mcp.database_query`` (stdio) or ``… --http`` (port 8102, ``--port N`` to change).
The tools call :class:`payfn_shared.monitoring.database.DatabaseMonitor`, the
same code as ``/monitoring/database/*``: SELECT-only user, read-only
transactions, one constant SQL text per query with parameters, row limits and
a statement timeout. A filter the grammar does not know is refused, not guessed.
"""

from __future__ import annotations

from functools import cache

from mcp.server import MCPServer
from mcp.types import CallToolResult
from payfn_shared.monitoring.database import DatabaseMonitor

from payfn_mcp.common import READ_ONLY, answer, serve

server = MCPServer(
    "payfn-database-query",
    instructions="Read-only queries over payfn's payments database (MariaDB paydb): payments by "
    "natural-language filter, statistics, outbox backlog, and a reconciliation of ledger, payment "
    "states, the merchant balance projection and the outbox.",
)


@cache
def monitor() -> DatabaseMonitor:
    """Built on first use, so the server starts (and lists tools) even before the stack is up."""
    return DatabaseMonitor()


@server.tool(annotations=READ_ONLY)
def query_payments(filter: str = "", limit: int = 20) -> CallToolResult:
    """Payments matching a filter, newest first (limit 1-100). Filter words: requested/completed/
    refunded/failed, 'merchant X', today, yesterday, 'last hour', 'last 24h', 'last 3 days',
    'over N' / 'under N' (minor units), a currency code like KRW, a payment id.
    Example: 'completed merchant M1 last hour over 50000'."""
    return answer(lambda: monitor().query_payments(filter, limit))


@server.tool(annotations=READ_ONLY)
def payment_statistics(time_range: str = "24h") -> CallToolResult:
    """Payment counts and amount sums (per currency) by status, with capture and refund rates,
    over a time range: 30m, 1h, 24h, 7d, today, yesterday, all."""
    return answer(lambda: monitor().payment_statistics(time_range))


@server.tool(annotations=READ_ONLY)
def check_outbox_status(max_age_minutes: int = 5) -> CallToolResult:
    """Outbox events not yet published to Kafka: backlog, oldest age, publish errors, and the rows
    older than max_age_minutes with their attempts and last error."""
    return answer(lambda: monitor().outbox_status(max_age_minutes))


@server.tool(annotations=READ_ONLY)
def reconciliation_check(merchant_id: str | None = None) -> CallToolResult:
    """Double-entry reconciliation: every payment's ledger entries and outbox events match its status,
    and the merchant balance projection matches the payments. Optional merchant_id narrows it."""
    return answer(lambda: monitor().reconciliation(merchant_id))


def main() -> None:
    serve(server, "payfn_mcp.database_query", default_port=8102)


if __name__ == "__main__":
    main()
