"""The seed's smoke test, through the gateway: a payment's whole life and the error contract."""

from __future__ import annotations

import uuid

import pytest
from payfn_shared.platform.config import Settings

from tests.e2e.gateway_client import call


@pytest.fixture
def merchant() -> str:
    return f"E2E{uuid.uuid4().hex[:12]}"


def authorize(settings: Settings, merchant: str, key: str, amount: int = 50000) -> dict:
    reply = call(settings.gateway_url, "POST", "/api/payments/authorize",
                 {"merchantId": merchant, "amount": amount, "currency": "KRW", "idempotencyKey": key})
    assert reply.status == 200, reply.body
    return reply.json()


def test_authorize_capture_refund_get(settings: Settings, merchant: str) -> None:
    payment = authorize(settings, merchant, "smoke-1")
    assert payment["status"] == "REQUESTED" and payment["ledgerEntries"] == []
    pid = payment["paymentId"]

    captured = call(settings.gateway_url, "POST", f"/api/payments/capture/{pid}", {"merchantId": merchant})
    assert captured.status == 200
    assert captured.json()["status"] == "COMPLETED"
    assert captured.json()["ledgerEntries"] == [
        {"debitAccount": "merchant_receivable", "creditAccount": "cash", "amount": 50000}]

    refunded = call(settings.gateway_url, "POST", f"/api/payments/refund/{pid}",
                    {"merchantId": merchant, "reason": "customer request"})
    assert refunded.status == 200 and refunded.json()["status"] == "REFUNDED"

    fetched = call(settings.gateway_url, "GET", f"/api/payments/{pid}?merchantId={merchant}")
    assert fetched.status == 200
    assert [e["debitAccount"] for e in fetched.json()["ledgerEntries"]] == ["merchant_receivable", "cash"]


def test_replay_conflicts_and_not_found(settings: Settings, merchant: str) -> None:
    first = authorize(settings, merchant, "smoke-replay")
    body = {"merchantId": merchant, "amount": 50000, "currency": "KRW", "idempotencyKey": "smoke-replay"}
    replay = call(settings.gateway_url, "POST", "/api/payments/authorize", body)
    assert replay.status == 200 and replay.headers.get("idempotent-replayed") == "true"
    assert replay.json()["paymentId"] == first["paymentId"]

    reused = call(settings.gateway_url, "POST", "/api/payments/authorize",
                  {"merchantId": merchant, "amount": 1, "currency": "KRW", "idempotencyKey": "smoke-replay"})
    assert reused.status == 422 and reused.json()["code"] == "IDEMPOTENCY_KEY_REUSED"

    refund_early = call(settings.gateway_url, "POST", f"/api/payments/refund/{first['paymentId']}",
                        {"merchantId": merchant, "reason": "too early"})
    assert refund_early.status == 409 and refund_early.json()["code"] == "REFUND_CONFLICT"

    other = call(settings.gateway_url, "GET", f"/api/payments/{first['paymentId']}?merchantId=SOMEONEELSE")
    assert other.status == 404 and other.json()["code"] == "NOT_FOUND"


def test_bad_input_is_a_clear_4xx(settings: Settings, merchant: str) -> None:
    malformed = call(settings.gateway_url, "POST", "/api/payments/authorize", raw=b'{"merchantId": ')
    assert malformed.status == 400 and malformed.json()["code"] == "MALFORMED_JSON"
    invalid = call(settings.gateway_url, "POST", "/api/payments/authorize",
                   {"merchantId": merchant, "amount": -5, "currency": "XXX1", "idempotencyKey": "k"})
    assert invalid.status == 400 and invalid.json()["code"] == "VALIDATION_FAILED"
    assert {e["field"] for e in invalid.json()["errors"]} >= {"amount", "currency"}


def test_breaker_status_and_gateway_actuator(settings: Settings) -> None:
    status = call(settings.gateway_url, "GET", "/api/circuit-breaker/status")
    assert status.status == 200
    assert status.json()["kafka-publisher"]["state"] in {"CLOSED", "OPEN", "HALF_OPEN"}
    single = call(settings.gateway_url, "GET", "/api/circuit-breaker/kafka-publisher")
    assert single.status == 200 and "failureRate" in single.json()

    health = call(settings.gateway_url, "GET", "/actuator/health")
    assert health.status == 200 and health.json()["status"] == "UP"
    metrics = call(settings.gateway_url, "GET", "/actuator/prometheus")
    assert metrics.status == 200 and b"spring_cloud_gateway_requests_seconds" in metrics.body
