"""POST /payments/refund/{paymentId}: COMPLETED → REFUNDED with its ledger entry and reason."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from payfn_shared.payments.api import create_app, logger, reply_response, request_json
from payfn_shared.payments.publisher import warm_publisher
from payfn_shared.payments.service import get_payment_service
from payfn_shared.payments.validation import load_validation_config, validate_refund

app = create_app()
config = load_validation_config()
warm_publisher()


@app.post("/payments/refund/<payment_id>")
def refund(payment_id: str) -> Response:
    request = validate_refund(request_json(app.current_event, config))
    return reply_response(get_payment_service().refund(payment_id, request))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
