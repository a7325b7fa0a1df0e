"""The HTTP edge shared by the API functions (Powertools REST resolver).

Every function builds its resolver with :func:`create_app`, which installs the
error handlers: an :class:`~payfn_shared.platform.errors.ApiError` becomes the spec's
error body with its status and headers; anything else is logged with its stack
trace and answered ``500 INTERNAL_ERROR`` with no details, so a client never
sees a traceback. Handlers stay thin: parse, validate, call the service.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Protocol

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from payfn_shared.payments.validation import ValidationConfig, parse_json_body
from payfn_shared.platform.errors import ApiError, InternalError, NotFound

JSON = "application/json"

#: Powertools' own variable names the service in every log line (default: "payfn").
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "payfn")


class ReplyLike(Protocol):
    """A use case's answer (``payfn_shared.payments.service.Reply``), without importing it here."""

    @property
    def status_code(self) -> int: ...

    @property
    def body(self) -> dict[str, Any]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def json_response(
    status_code: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        status_code=status_code,
        content_type=JSON,
        body=json.dumps(body, separators=(",", ":")),
        headers=dict(headers or {}),
    )


def error_response(error: ApiError) -> Response:
    return json_response(error.status, error.body(), error.headers)


def reply_response(reply: ReplyLike) -> Response:
    return json_response(reply.status_code, reply.body, reply.headers)


def create_app() -> APIGatewayRestResolver:
    """A REST (v1) resolver whose every error answer is the spec's JSON error body."""
    app = APIGatewayRestResolver()

    @app.exception_handler(ApiError)
    def _api_error(error: ApiError) -> Response:
        if error.status >= 500:
            logger.warning("answering %s %s: %s", error.status, error.code, error.__cause__ or error.message)
        return error_response(error)

    @app.exception_handler(Exception)
    def _unexpected(error: Exception) -> Response:
        logger.exception("unhandled error, answering 500 INTERNAL_ERROR")
        return error_response(InternalError())

    @app.not_found
    def _no_route(error: Exception) -> Response:
        return error_response(NotFound("No such route"))

    return app


def request_json(event: APIGatewayProxyEvent, config: ValidationConfig) -> dict[str, Any]:
    """The request's JSON object, after size, content-type and syntax checks (400/413)."""
    return parse_json_body(
        event.body,
        event.headers.get("content-type"),
        is_base64=bool(event.is_base64_encoded),
        max_bytes=config.max_body_bytes,
    )
