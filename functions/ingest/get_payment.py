"""GET /payments/{paymentId}?merchantId=: the payment with its ledger entries (own payments only)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from payfn_shared.payments.api import create_app, logger, reply_response
from payfn_shared.payments.service import get_payment_service
from payfn_shared.payments.validation import validate_merchant_query

app = create_app()


@app.get("/payments/<payment_id>")
def get_payment(payment_id: str) -> Response:
    merchant_id = validate_merchant_query(app.current_event.get_query_string_value("merchantId"))
    return reply_response(get_payment_service().get(payment_id, merchant_id))


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
