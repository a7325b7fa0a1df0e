"""Error bodies, event payloads and the ledger rules (pure functions, no services)."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from payfn_shared.payments.domain import (
    CAPTURE,
    REFUND,
    Payment,
    PaymentStatus,
    check_transition,
    ledger_entry_for,
    payment_body,
)
from payfn_shared.payments.events import EVENT_CAPTURED, EVENT_REFUNDED, build_event, iso_millis
from payfn_shared.platform.errors import (
    CaptureConflict,
    DependencyUnavailable,
    FieldError,
    IdempotencyKeyReused,
    InternalError,
    NotFound,
    PayloadTooLarge,
    RateLimitExceeded,
    RefundConflict,
    RequestInProgress,
    ValidationFailed,
)
from payfn_shared.platform.idempotency import (
    IdempotencyRecord,
    RecordStatus,
    StoredResponse,
    request_hash,
    resolve_existing,
)

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678000)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ValidationFailed(), 400, "VALIDATION_FAILED"),
        (PayloadTooLarge(), 413, "PAYLOAD_TOO_LARGE"),
        (NotFound(), 404, "NOT_FOUND"),
        (RequestInProgress(), 409, "REQUEST_IN_PROGRESS"),
        (CaptureConflict(), 409, "CAPTURE_CONFLICT"),
        (RefundConflict(), 409, "REFUND_CONFLICT"),
        (IdempotencyKeyReused(), 422, "IDEMPOTENCY_KEY_REUSED"),
        (RateLimitExceeded(), 429, "RATE_LIMIT_EXCEEDED"),
        (DependencyUnavailable(), 503, "SERVICE_UNAVAILABLE"),
        (InternalError(), 500, "INTERNAL_ERROR"),
    ],
)
def test_error_status_and_code(error: Exception, status: int, code: str) -> None:
    assert (error.status, error.code) == (status, code)  # type: ignore[attr-defined]
    assert set(error.body()) == {"code", "message", "paymentId"}  # type: ignore[attr-defined]


def test_validation_error_body_lists_fields() -> None:
    body = ValidationFailed(errors=[FieldError("amount", "must be positive")], payment_id="p").body()
    assert body == {
        "code": "VALIDATION_FAILED",
        "message": "Request validation failed",
        "paymentId": "p",
        "errors": [{"field": "amount", "message": "must be positive"}],
    }


def test_event_payload_headers_and_key() -> None:
    event = build_event(
        EVENT_REFUNDED, payment_id="p-1", merchant_id="m1", status="REFUNDED", amount=10, currency="EUR",
        occurred_at=MOMENT, reason="duplicate",
    )
    assert event.topic == "payment.refunded" and event.key == "p-1"
    assert dict(event.headers()) == {"eventId": event.event_id.encode(), "eventType": b"PAYMENT_REFUNDED"}
    assert json.loads(event.value()) == {
        "eventId": event.event_id, "eventType": "PAYMENT_REFUNDED", "paymentId": "p-1", "merchantId": "m1",
        "status": "REFUNDED", "amount": 10, "currency": "EUR", "occurredAt": "2026-01-02T03:04:05.678Z",
        "reason": "duplicate",
    }
    captured = build_event(
        EVENT_CAPTURED, payment_id="p-1", merchant_id="m1", status="COMPLETED", amount=10, currency="EUR",
        occurred_at=MOMENT,
    )
    assert "reason" not in captured.payload and captured.event_id != event.event_id
    with pytest.raises(ValueError):
        build_event("NOPE", payment_id="p", merchant_id="m", status="S", amount=1, currency="EUR",
                    occurred_at=MOMENT)
    assert iso_millis(datetime(2026, 1, 1)) == "2026-01-01T00:00:00.000Z"


def _payment(status: PaymentStatus) -> Payment:
    return Payment("p-1", "m1", 250, "USD", status, "k", "h", MOMENT, MOMENT)


def test_ledger_rules_follow_the_spec() -> None:
    assert ledger_entry_for(_payment(PaymentStatus.REQUESTED), CAPTURE).to_dict() == {
        "debitAccount": "merchant_receivable", "creditAccount": "cash", "amount": 250,
    }
    assert ledger_entry_for(_payment(PaymentStatus.COMPLETED), REFUND).to_dict() == {
        "debitAccount": "cash", "creditAccount": "merchant_receivable", "amount": 250,
    }


@pytest.mark.parametrize(
    ("status", "transition", "error"),
    [
        (PaymentStatus.COMPLETED, CAPTURE, CaptureConflict),
        (PaymentStatus.REFUNDED, CAPTURE, CaptureConflict),
        (PaymentStatus.REQUESTED, REFUND, RefundConflict),
        (PaymentStatus.REFUNDED, REFUND, RefundConflict),
    ],
)
def test_illegal_transitions_conflict(status: PaymentStatus, transition: object, error: type) -> None:
    with pytest.raises(error) as caught:
        check_transition(_payment(status), transition)  # type: ignore[arg-type]
    assert caught.value.payment_id == "p-1"


def test_payment_body_shape() -> None:
    body = payment_body(_payment(PaymentStatus.REQUESTED), [], "Payment authorized")
    assert body == {
        "paymentId": "p-1", "status": "REQUESTED", "amount": 250, "currency": "USD",
        "createdAt": "2026-01-02T03:04:05.678Z", "ledgerEntries": [], "message": "Payment authorized",
    }


def _record(status: RecordStatus, req_hash: str, response: StoredResponse | None) -> IdempotencyRecord:
    return IdempotencyRecord("m1", "k", req_hash, status, "p-1", response, MOMENT, MOMENT)


def test_idempotency_resolution() -> None:
    h = request_hash({"b": 1, "a": 2})
    assert h == request_hash({"a": 2, "b": 1})
    stored = StoredResponse(200, {"paymentId": "p-1"})
    assert resolve_existing(_record(RecordStatus.COMPLETED, h, stored), h) is stored
    with pytest.raises(IdempotencyKeyReused) as reused:
        resolve_existing(_record(RecordStatus.COMPLETED, h, stored), "other")
    assert reused.value.payment_id == "p-1"
    with pytest.raises(RequestInProgress):
        resolve_existing(_record(RecordStatus.IN_PROGRESS, h, None), h)
