"""The API's error vocabulary: one exception per row of the spec's status table.

Domain code raises these; the HTTP edge (``payfn_shared.payments.api``) turns any of them
into the spec's error body ``{code, message, paymentId}`` (+ ``errors``) with the
right status, so no layer below the handler needs to know about HTTP responses
and no error ever leaks as a bare 500 with a stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class FieldError:
    """One invalid field, reported in the ``errors`` list of a 400."""

    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class ApiError(Exception):
    """Base of every error the API answers deliberately (never a stack trace)."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    default_message: ClassVar[str] = "Internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        payment_id: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.payment_id = payment_id
        self.errors = tuple(errors)
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The spec's error body; ``errors`` only when there are field errors."""
        body: dict[str, Any] = {"code": self.code, "message": self.message, "paymentId": self.payment_id}
        if self.errors:
            body["errors"] = [e.to_dict() for e in self.errors]
        return body


class InternalError(ApiError):
    """Anything unexpected: answered without details (the cause is only logged)."""


class ValidationFailed(ApiError):
    status = 400
    code = "VALIDATION_FAILED"
    default_message = "Request validation failed"


class MalformedJson(ApiError):
    status = 400
    code = "MALFORMED_JSON"
    default_message = "Request body is not valid JSON"


class PayloadTooLarge(ApiError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    default_message = "Request body is too large"


class NotFound(ApiError):
    status = 404
    code = "NOT_FOUND"
    default_message = "Payment not found"


class RequestInProgress(ApiError):
    status = 409
    code = "REQUEST_IN_PROGRESS"
    default_message = "A request with this idempotency key is still being processed"


class CaptureConflict(ApiError):
    status = 409
    code = "CAPTURE_CONFLICT"
    default_message = "Only a REQUESTED payment can be captured"


class RefundConflict(ApiError):
    status = 409
    code = "REFUND_CONFLICT"
    default_message = "Only a COMPLETED payment can be refunded"


class IdempotencyKeyReused(ApiError):
    status = 422
    code = "IDEMPOTENCY_KEY_REUSED"
    default_message = "This idempotency key was already used with a different request body"


class RateLimitExceeded(ApiError):
    status = 429
    code = "RATE_LIMIT_EXCEEDED"
    default_message = "Rate limit exceeded"


class ServiceUnavailable(ApiError):
    status = 503
    code = "SERVICE_UNAVAILABLE"
    default_message = "A dependency is unavailable, try again later"


class DependencyUnavailable(ServiceUnavailable):
    """A backing service (the database) cannot be reached; raised by the data layer.

    A subclass of the 503 error so that a handler needs no mapping of its own: the
    data layer knows the driver's error numbers, the edge knows only ApiError.
    """
