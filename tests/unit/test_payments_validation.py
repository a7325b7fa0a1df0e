"""The spec's validation rules, one row per case (no services)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from payfn_shared.payments.validation import (
    ValidationConfig,
    is_payment_id,
    parse_json_body,
    validate_authorize,
    validate_capture,
    validate_merchant_query,
    validate_refund,
)
from payfn_shared.platform.errors import MalformedJson, PayloadTooLarge, ValidationFailed

CONFIG = ValidationConfig(max_amount=1_000_000, max_body_bytes=256)
VALID = {"merchantId": "merchant_1-A", "amount": 100, "currency": "EUR", "idempotencyKey": "key-1"}


def _fields(exc: ValidationFailed) -> set[str]:
    return {e.field for e in exc.errors}


def test_valid_authorize_is_accepted() -> None:
    request = validate_authorize(VALID, CONFIG)
    assert (request.merchant_id, request.amount, request.currency, request.idempotency_key) == (
        "merchant_1-A", 100, "EUR", "key-1",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("merchantId", ""),
        ("merchantId", "m" * 33),
        ("merchantId", "bad id"),
        ("merchantId", "m/1"),
        ("merchantId", 12),
        ("amount", 0),
        ("amount", -5),
        ("amount", 1.5),
        ("amount", 100.0),
        ("amount", "100"),
        ("amount", True),
        ("amount", 1_000_001),
        ("amount", None),
        ("currency", "usd"),
        ("currency", "XXX"),
        ("currency", "ABC"),
        ("currency", "US"),
        ("currency", 840),
        ("idempotencyKey", ""),
        ("idempotencyKey", "k" * 65),
        ("idempotencyKey", "tab\there"),
        ("idempotencyKey", "ключ"),
        ("idempotencyKey", 7),
    ],
)
def test_invalid_authorize_field_is_reported(field: str, value: Any) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_authorize({**VALID, field: value}, CONFIG)
    assert _fields(caught.value) == {field}
    assert caught.value.status == 400 and caught.value.code == "VALIDATION_FAILED"


def test_boundaries_are_accepted() -> None:
    validate_authorize({**VALID, "merchantId": "m" * 32, "amount": 1, "idempotencyKey": "~" * 64}, CONFIG)
    validate_authorize({**VALID, "amount": CONFIG.max_amount, "idempotencyKey": " !"}, CONFIG)


def test_unknown_and_missing_fields_are_all_reported() -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate_authorize({"merchantId": "m1", "amount": 5, "extra": 1}, CONFIG)
    assert _fields(caught.value) == {"extra", "currency", "idempotencyKey"}


def test_capture_and_refund_rules() -> None:
    assert validate_capture({"merchantId": "m1"}).merchant_id == "m1"
    assert validate_refund({"merchantId": "m1", "reason": "r" * 128}).reason == "r" * 128


@pytest.mark.parametrize(
    ("validate", "body", "fields"),
    [
        (validate_capture, {}, {"merchantId"}),
        (validate_capture, {"merchantId": "m1", "amount": 1}, {"amount"}),
        (validate_capture, {"merchantId": "m 1"}, {"merchantId"}),
        (validate_refund, {"merchantId": "m1"}, {"reason"}),
        (validate_refund, {"merchantId": "m1", "reason": ""}, {"reason"}),
        (validate_refund, {"merchantId": "m1", "reason": "r" * 129}, {"reason"}),
        (validate_refund, {"merchantId": "m1", "reason": "   "}, {"reason"}),
        (validate_refund, {"merchantId": "m1", "reason": 5}, {"reason"}),
    ],
)
def test_capture_and_refund_errors(validate: Any, body: dict[str, Any], fields: set[str]) -> None:
    with pytest.raises(ValidationFailed) as caught:
        validate(body)
    assert _fields(caught.value) == fields


def test_merchant_query_and_payment_ids() -> None:
    assert validate_merchant_query("m1") == "m1"
    with pytest.raises(ValidationFailed):
        validate_merchant_query(None)
    with pytest.raises(ValidationFailed):
        validate_merchant_query("bad id")
    assert is_payment_id("3f2c1a9e-8b7d-4c6e-9f01-23456789abcd")
    assert not is_payment_id("3F2C1A9E-8B7D-4C6E-9F01-23456789ABCD")
    assert not is_payment_id("not-a-uuid")
    assert not is_payment_id(None)


def _parse(body: str | None, content_type: str | None = "application/json", **kw: Any) -> dict[str, Any]:
    return parse_json_body(body, content_type, max_bytes=CONFIG.max_body_bytes, **kw)


def test_body_parsing() -> None:
    assert _parse('{"a": 1}') == {"a": 1}
    assert _parse('{"a": 1}', "application/json; charset=utf-8") == {"a": 1}
    encoded = base64.b64encode(b'{"a": 2}').decode()
    assert _parse(encoded, is_base64=True) == {"a": 2}


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        ("{bad", "application/json", MalformedJson),
        ("", "application/json", MalformedJson),
        (None, "application/json", MalformedJson),
        ('{"a": NaN}', "application/json", MalformedJson),
        ('{"a": 1, "a": 2}', "application/json", MalformedJson),
        ("[1, 2]", "application/json", ValidationFailed),
        ('{"a": 1}', "text/plain", ValidationFailed),
        ('{"a": 1}', None, ValidationFailed),
        ("x" * 257, "application/json", PayloadTooLarge),
        ("x" * 257, "text/plain", PayloadTooLarge),
    ],
)
def test_body_errors(body: str | None, content_type: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        _parse(body, content_type)


def test_size_limit_counts_utf8_bytes() -> None:
    body = json.dumps({"k": "é" * 200}, ensure_ascii=False)
    assert len(body) < 256 < len(body.encode())
    with pytest.raises(PayloadTooLarge):
        _parse(body)
