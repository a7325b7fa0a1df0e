"""Building API Gateway REST (v1) proxy events and invoking ingest handlers in process.

Used by the unit, integration and load tests of the ingest functions: they call
the real handler modules (``functions/ingest/*.py``) with the exact event shape
API Gateway sends, so routing, headers and bodies go through Powertools as on Lambda.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

INGEST_DIR = Path(__file__).resolve().parent.parent / "functions" / "ingest"


@dataclass
class LambdaContextStub:
    """The attributes of Lambda's context object that Powertools and handlers read."""

    function_name: str = "payfn-ingest-test"
    memory_limit_in_mb: int = 256
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:payfn-ingest-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_seconds: float = 10.0
    _started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (time.monotonic() - self._started)) * 1000))


def rest_event(
    method: str,
    path: str,
    *,
    resource: str | None = None,
    path_parameters: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    body: str | bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    """An API Gateway REST API proxy event (payload format 1.0), as sent for stage ``v1``."""
    all_headers = {"Host": "api.payfn.local", "User-Agent": "pytest", "X-Forwarded-Proto": "https"}
    if body is not None:
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    raw: str | None
    if isinstance(body, dict):
        raw = json.dumps(body)
    elif isinstance(body, bytes):
        raw = body.decode("utf-8")
    else:
        raw = body
    if raw is not None and base64_body:
        raw = base64.b64encode(raw.encode("utf-8")).decode("ascii")
    request_id = str(uuid.uuid4())
    return {
        "resource": resource or path,
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123",
            "resourcePath": resource or path,
            "httpMethod": method,
            "extendedRequestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime()),
            "path": f"/v1{path}",
            "accountId": "000000000000",
            "protocol": "HTTP/1.1",
            "stage": "v1",
            "domainPrefix": "api",
            "requestTimeEpoch": int(time.time() * 1000),
            "requestId": request_id,
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "pytest"},
            "domainName": "api.payfn.local",
            "apiId": "payfnapi",
        },
        "body": raw,
        "isBase64Encoded": base64_body,
    }


def authorize_event(body: Any, **kwargs: Any) -> dict[str, Any]:
    return rest_event("POST", "/payments/authorize", body=body, **kwargs)


def capture_event(payment_id: str, body: Any, **kwargs: Any) -> dict[str, Any]:
    return rest_event(
        "POST", f"/payments/capture/{payment_id}", resource="/payments/capture/{paymentId}",
        path_parameters={"paymentId": payment_id}, body=body, **kwargs,
    )


def refund_event(payment_id: str, body: Any, **kwargs: Any) -> dict[str, Any]:
    return rest_event(
        "POST", f"/payments/refund/{payment_id}", resource="/payments/refund/{paymentId}",
        path_parameters={"paymentId": payment_id}, body=body, **kwargs,
    )


def get_event(payment_id: str, merchant_id: str | None) -> dict[str, Any]:
    return rest_event(
        "GET", f"/payments/{payment_id}", resource="/payments/{paymentId}",
        path_parameters={"paymentId": payment_id},
        query={"merchantId": merchant_id} if merchant_id is not None else None,
    )


def load_function(name: str) -> ModuleType:
    """Import ``functions/ingest/<name>.py`` fresh, like a cold start of that function."""
    if str(INGEST_DIR) not in sys.path:
        sys.path.insert(0, str(INGEST_DIR))
    module_name = f"ingest_{name}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, INGEST_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def invoke(module: ModuleType, event: dict[str, Any]) -> HttpReply:
    """Call ``module.handler`` and decode its proxy response (headers case-folded)."""
    result = module.handler(event, LambdaContextStub())
    headers = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
    for key, values in (result.get("multiValueHeaders") or {}).items():
        headers.setdefault(key.lower(), values[-1])
    body = json.loads(result["body"]) if result.get("body") else {}
    return HttpReply(int(result["statusCode"]), headers, body)
