"""The ingest handlers with the payments service replaced by a fake (routing, parsing, error mapping)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from payfn_shared.payments.service import Reply
from payfn_shared.platform.errors import CaptureConflict, DependencyUnavailable, NotFound, RateLimitExceeded

from tests.apigw import (
    authorize_event,
    capture_event,
    get_event,
    invoke,
    load_function,
    refund_event,
    rest_event,
)

PAYMENT_ID = "3f2c1a9e-8b7d-4c6e-9f01-23456789abcd"
BODY = {"merchantId": "m1", "amount": 100, "currency": "USD", "idempotencyKey": "k1"}


class FakeService:
    """Records calls and answers what the test tells it to."""

    def __init__(self, outcome: Reply | Exception) -> None:
        self.outcome = outcome
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def _answer(self, name: str, *args: Any) -> Reply:
        self.calls.append((name, args))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def authorize(self, request: Any) -> Reply:
        return self._answer("authorize", request)

    def capture(self, payment_id: str, request: Any) -> Reply:
        return self._answer("capture", payment_id, request)

    def refund(self, payment_id: str, request: Any) -> Reply:
        return self._answer("refund", payment_id, request)

    def get(self, payment_id: str, merchant_id: str) -> Reply:
        return self._answer("get", payment_id, merchant_id)


def _with_fake(
    monkeypatch: pytest.MonkeyPatch, name: str, outcome: Reply | Exception
) -> tuple[ModuleType, FakeService]:
    module = load_function(name)
    fake = FakeService(outcome)
    monkeypatch.setattr(module, "get_payment_service", lambda: fake)
    return module, fake


OK = Reply(200, {"paymentId": PAYMENT_ID, "status": "REQUESTED"}, {"X-RateLimit-Limit": "10"})


def test_authorize_passes_the_validated_request(monkeypatch: pytest.MonkeyPatch) -> None:
    module, fake = _with_fake(monkeypatch, "authorize", OK)
    reply = invoke(module, authorize_event(BODY))
    assert reply.status == 200 and reply.body["paymentId"] == PAYMENT_ID
    assert reply.headers["content-type"] == "application/json" and reply.headers["x-ratelimit-limit"] == "10"
    (name, (request,)), = fake.calls
    assert name == "authorize" and request.amount == 100 and request.idempotency_key == "k1"


@pytest.mark.parametrize(
    ("event_kwargs", "status", "code"),
    [
        ({"body": "{not json"}, 400, "MALFORMED_JSON"),
        ({"body": {**BODY, "amount": -1}}, 400, "VALIDATION_FAILED"),
        ({"body": {**BODY, "amount": 1.25}}, 400, "VALIDATION_FAILED"),
        ({"body": {**BODY, "currency": "ZZZ"}}, 400, "VALIDATION_FAILED"),
        ({"body": {**BODY, "note": "x"}}, 400, "VALIDATION_FAILED"),
        ({"body": BODY, "headers": {"Content-Type": "text/plain"}}, 400, "VALIDATION_FAILED"),
        ({"body": {**BODY, "pad": "x" * 20_000}}, 413, "PAYLOAD_TOO_LARGE"),
    ],
)
def test_bad_requests_never_reach_the_service(
    monkeypatch: pytest.MonkeyPatch, event_kwargs: dict[str, Any], status: int, code: str
) -> None:
    module, fake = _with_fake(monkeypatch, "authorize", OK)
    reply = invoke(module, authorize_event(**event_kwargs))
    assert (reply.status, reply.body["code"]) == (status, code)
    assert set(reply.body) >= {"code", "message", "paymentId"}
    assert fake.calls == []


def test_base64_body_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    module, fake = _with_fake(monkeypatch, "authorize", OK)
    assert invoke(module, authorize_event(BODY, base64_body=True)).status == 200
    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (CaptureConflict(payment_id=PAYMENT_ID), 409, "CAPTURE_CONFLICT"),
        (NotFound(payment_id=PAYMENT_ID), 404, "NOT_FOUND"),
        (DependencyUnavailable(), 503, "SERVICE_UNAVAILABLE"),
        (
            RateLimitExceeded(headers={"Retry-After": "7", "X-RateLimit-Remaining": "0"}),
            429,
            "RATE_LIMIT_EXCEEDED",
        ),
    ],
)
def test_domain_errors_become_spec_bodies(
    monkeypatch: pytest.MonkeyPatch, error: Exception, status: int, code: str
) -> None:
    module, _ = _with_fake(monkeypatch, "capture", error)
    reply = invoke(module, capture_event(PAYMENT_ID, {"merchantId": "m1"}))
    assert (reply.status, reply.body["code"]) == (status, code)
    if status == 429:
        assert reply.headers["retry-after"] == "7" and reply.headers["x-ratelimit-remaining"] == "0"


def test_unexpected_error_is_a_bare_500(monkeypatch: pytest.MonkeyPatch) -> None:
    module, _ = _with_fake(monkeypatch, "refund", RuntimeError("secret detail in a traceback"))
    reply = invoke(module, refund_event(PAYMENT_ID, {"merchantId": "m1", "reason": "dup"}))
    assert reply.status == 500
    assert reply.body == {"code": "INTERNAL_ERROR", "message": "Internal error", "paymentId": None}


def test_refund_and_get_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    module, fake = _with_fake(monkeypatch, "refund", OK)
    assert invoke(module, refund_event(PAYMENT_ID, {"merchantId": "m1", "reason": "dup"})).status == 200
    assert fake.calls[0][0] == "refund" and fake.calls[0][1][0] == PAYMENT_ID
    module, fake = _with_fake(monkeypatch, "get_payment", OK)
    assert invoke(module, get_event(PAYMENT_ID, "m1")).status == 200
    assert fake.calls == [("get", (PAYMENT_ID, "m1"))]
    reply = invoke(module, get_event(PAYMENT_ID, None))
    assert (reply.status, reply.body["code"]) == (400, "VALIDATION_FAILED")


def test_unknown_route_is_a_spec_404(monkeypatch: pytest.MonkeyPatch) -> None:
    module, _ = _with_fake(monkeypatch, "authorize", OK)
    reply = invoke(module, rest_event("POST", "/payments/nope", body=BODY))
    assert (reply.status, reply.body["code"]) == (404, "NOT_FOUND")
