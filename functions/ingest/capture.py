"""POST /payments/capture/{paymentId}: REQUESTED → COMPLETED with its ledger entry."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from payfn_shared.payments.api import create_app, logger, reply_response, request_json
from payfn_shared.payments.publisher import warm_publisher
from payfn_shared.payments.service import get_payment_service
from payfn_shared.payments.validation import load_validation_config, validate_capture

app = create_app()
config = load_validation_config()
warm_publisher()


@app.post("/payments/capture/<payment_id>")
def capture(payment_id: str) -> Response:
    request = validate_capture(request_json(app.current_event, config))
    return reply_response(get_payment_service().capture(payment_id, request))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
