"""GET /monitoring/circuit-breaker/*: the kafka-publisher breaker, Kafka's health, diagnosis, history.

Thin: every answer is computed by :mod:`payfn_shared.monitoring.breaker_monitor`,
the same code the circuit-breaker MCP server calls. ``health`` answers 200 with
``status`` UP / DEGRADED / DOWN: the endpoint reports on Kafka, it is not Kafka.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from payfn_shared.monitoring.breaker_monitor import BreakerMonitor
from payfn_shared.monitoring.database import DatabaseMonitor
from payfn_shared.payments.api import create_app, json_response, logger

app = create_app()
monitor = BreakerMonitor(outbox_status=DatabaseMonitor().outbox_status)


@app.get("/monitoring/circuit-breaker/status")
def status() -> Response:
    return json_response(200, monitor.status())


@app.get("/monitoring/circuit-breaker/health")
def health() -> Response:
    return json_response(200, monitor.health())


@app.get("/monitoring/circuit-breaker/diagnose")
def diagnose() -> Response:
    return json_response(200, monitor.diagnose())


@app.get("/monitoring/circuit-breaker/failure-pattern")
def failure_pattern() -> Response:
    return json_response(200, monitor.failure_pattern(app.current_event.get_query_string_value("timeRange")))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
