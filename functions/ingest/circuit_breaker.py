"""GET /circuit-breaker/kafka-publisher and /circuit-breaker/status: the publisher breaker's snapshot."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from payfn_shared.payments.api import create_app, json_response, logger
from payfn_shared.payments.publisher import BREAKER_NAME
from payfn_shared.platform.breaker import get_breaker

app = create_app()


@app.get(f"/circuit-breaker/{BREAKER_NAME}")
def kafka_publisher() -> Response:
    return json_response(200, get_breaker(BREAKER_NAME).snapshot())


@app.get("/circuit-breaker/status")
def status() -> Response:
    return json_response(200, {BREAKER_NAME: get_breaker(BREAKER_NAME).snapshot()})


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
