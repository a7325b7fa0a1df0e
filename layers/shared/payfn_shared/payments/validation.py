"""Request validation for the payments API, exactly the spec's rules.

Everything a client can get wrong is decided here, before any dependency is
touched, so a bad request costs no database round trip and no rate-limit token.
Field errors are collected (not first-fail) so a client sees all of them at once.
Against Powertools' ``enable_validation`` + pydantic (``tests/load/bench_pieces.py``): 34–43 vs 66–81
CPU µs per authorize through the resolver, and its 422 ``detail`` list is not the spec's 400 body.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from payfn_shared.payments.currencies import ISO_4217_CODES
from payfn_shared.platform import safejson
from payfn_shared.platform.config import ConfigError, load_dataclass
from payfn_shared.platform.errors import FieldError, MalformedJson, PayloadTooLarge, ValidationFailed

MERCHANT_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x20-\x7e]{1,64}")
JSON_MEDIA_TYPES = frozenset({"application/json"})


@dataclass(frozen=True)
class ValidationConfig:
    """Limits (env ``PAYFN_MAX_AMOUNT``, ``PAYFN_MAX_BODY_BYTES``)."""

    max_amount: int = 10_000_000_000
    max_body_bytes: int = 16_384

    def validate(self) -> None:
        if not 1 <= self.max_amount <= 2**63 - 1:
            raise ConfigError("PAYFN_MAX_AMOUNT must be between 1 and 2^63-1 (BIGINT)")
        if self.max_body_bytes < 64:
            raise ConfigError("PAYFN_MAX_BODY_BYTES must be >= 64")


def load_validation_config() -> ValidationConfig:
    config: ValidationConfig = load_dataclass(ValidationConfig)
    return config


@dataclass(frozen=True)
class AuthorizeRequest:
    merchant_id: str
    amount: int
    currency: str
    idempotency_key: str

    def canonical(self) -> dict[str, Any]:
        """The body as the client meant it, for the idempotency hash (order-independent)."""
        return {
            "merchantId": self.merchant_id,
            "amount": self.amount,
            "currency": self.currency,
            "idempotencyKey": self.idempotency_key,
        }


@dataclass(frozen=True)
class CaptureRequest:
    merchant_id: str


@dataclass(frozen=True)
class RefundRequest:
    merchant_id: str
    reason: str


def parse_json_body(
    body: str | None,
    content_type: str | None,
    *,
    is_base64: bool = False,
    max_bytes: int,
) -> dict[str, Any]:
    """Decode an API Gateway body into a JSON object, or raise the right 400/413.

    Order matters: the size is checked before any parsing so an oversize body is
    never decoded; the media type before JSON so a form post is not "malformed".
    """
    raw: bytes
    if body is None:
        raw = b""
    elif is_base64:
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedJson("Request body is not valid base64") from None
    else:
        raw = body.encode("utf-8", errors="surrogatepass")
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Request body exceeds {max_bytes} bytes")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES:
        raise ValidationFailed(
            "Content-Type must be application/json",
            errors=[FieldError("Content-Type", "must be application/json")],
        )
    if not raw.strip():
        raise MalformedJson("Request body is empty")
    try:
        data = safejson.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedJson(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValidationFailed(
            "Request body must be a JSON object", errors=[FieldError("body", "must be an object")]
        )
    return data


def _unknown_fields(data: Mapping[str, Any], allowed: frozenset[str]) -> list[FieldError]:
    return [FieldError(key, "unknown field") for key in sorted(data) if key not in allowed]


def check_merchant_id(value: Any, errors: list[FieldError], field: str = "merchantId") -> str:
    if not isinstance(value, str) or not MERCHANT_ID_RE.fullmatch(value):
        errors.append(FieldError(field, "must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'"))
        return ""
    return value


def _check_amount(value: Any, errors: list[FieldError], max_amount: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(FieldError("amount", "must be an integer number of minor units"))
        return 0
    if not 1 <= value <= max_amount:
        errors.append(FieldError("amount", f"must be between 1 and {max_amount}"))
        return 0
    return value


def _check_currency(value: Any, errors: list[FieldError]) -> str:
    if not isinstance(value, str) or value not in ISO_4217_CODES:
        errors.append(FieldError("currency", "must be an active ISO 4217 code (e.g. USD)"))
        return ""
    return value


def _check_idempotency_key(value: Any, errors: list[FieldError]) -> str:
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_RE.fullmatch(value):
        errors.append(FieldError("idempotencyKey", "must be 1-64 printable ASCII characters"))
        return ""
    return value


def _check_reason(value: Any, errors: list[FieldError]) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128 or not value.strip():
        errors.append(FieldError("reason", "must be 1-128 characters"))
        return ""
    return value


def _missing(data: Mapping[str, Any], required: tuple[str, ...]) -> list[FieldError]:
    return [FieldError(name, "is required") for name in required if name not in data or data[name] is None]


def _raise_if(errors: list[FieldError]) -> None:
    if errors:
        raise ValidationFailed(errors=errors)


def validate_authorize(data: Mapping[str, Any], config: ValidationConfig) -> AuthorizeRequest:
    required = ("merchantId", "amount", "currency", "idempotencyKey")
    errors = _unknown_fields(data, frozenset(required)) + _missing(data, required)
    missing = {e.field for e in errors}
    merchant_id = "" if "merchantId" in missing else check_merchant_id(data["merchantId"], errors)
    amount = 0 if "amount" in missing else _check_amount(data["amount"], errors, config.max_amount)
    currency = "" if "currency" in missing else _check_currency(data["currency"], errors)
    key = "" if "idempotencyKey" in missing else _check_idempotency_key(data["idempotencyKey"], errors)
    _raise_if(errors)
    return AuthorizeRequest(merchant_id, amount, currency, key)


def validate_capture(data: Mapping[str, Any]) -> CaptureRequest:
    errors = _unknown_fields(data, frozenset({"merchantId"})) + _missing(data, ("merchantId",))
    merchant_id = check_merchant_id(data["merchantId"], errors) if not errors else ""
    _raise_if(errors)
    return CaptureRequest(merchant_id)


def validate_refund(data: Mapping[str, Any]) -> RefundRequest:
    required = ("merchantId", "reason")
    errors = _unknown_fields(data, frozenset(required)) + _missing(data, required)
    missing = {e.field for e in errors}
    merchant_id = "" if "merchantId" in missing else check_merchant_id(data["merchantId"], errors)
    reason = "" if "reason" in missing else _check_reason(data["reason"], errors)
    _raise_if(errors)
    return RefundRequest(merchant_id, reason)


def validate_merchant_query(value: str | None) -> str:
    """``?merchantId=`` of GET: required, same rule as in bodies."""
    errors: list[FieldError] = []
    if value is None:
        errors.append(FieldError("merchantId", "is required"))
    else:
        check_merchant_id(value, errors)
    _raise_if(errors)
    return value or ""


def is_payment_id(value: str | None) -> bool:
    """Payment ids are canonical lowercase UUIDs; anything else cannot exist (→ 404)."""
    if not value or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
