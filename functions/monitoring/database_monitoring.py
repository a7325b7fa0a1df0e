"""GET /monitoring/database/* (and the idempotency lookup): read-only views of paydb.

Thin: parameters go to :class:`payfn_shared.monitoring.database.DatabaseMonitor`
(the same code the database-query MCP server calls), which reads through the
SELECT-only user in read-only transactions. Invalid parameters answer 400
``VALIDATION_FAILED``. The idempotency lookup keeps the seed's URL
(``/monitoring/redis/idempotency``) although payfn stores those records in
MariaDB, next to the payment they protect.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from payfn_shared.monitoring.database import DatabaseMonitor
from payfn_shared.payments.api import create_app, json_response, logger

app = create_app()
monitor = DatabaseMonitor()


def _query(name: str) -> str | None:
    return app.current_event.get_query_string_value(name)


@app.get("/monitoring/database/payments")
def payments() -> Response:
    return json_response(200, monitor.query_payments(_query("filter"), _query("limit")))


@app.get("/monitoring/database/statistics")
def statistics() -> Response:
    return json_response(200, monitor.payment_statistics(_query("timeRange")))


@app.get("/monitoring/database/outbox")
def outbox() -> Response:
    return json_response(200, monitor.outbox_status(_query("maxAgeMinutes")))


@app.get("/monitoring/database/reconciliation")
def reconciliation() -> Response:
    return json_response(200, monitor.reconciliation(_query("merchantId")))


@app.get("/monitoring/database/ledger")
def ledger() -> Response:
    return json_response(200, monitor.ledger_totals())


@app.get("/monitoring/redis/idempotency")
def idempotency() -> Response:
    return json_response(200, monitor.idempotency_records(_query("key"), _query("merchantId")))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
