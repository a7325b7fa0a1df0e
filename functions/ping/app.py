"""GET /ping: the ingest service's liveness, answered by a real function invocation."""

from __future__ import annotations

import json
import os
from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answer API Gateway's proxy event with the function's identity and remaining time."""
    body = {
        "status": "UP",
        "function": getattr(context, "function_name", os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")),
        "requestId": getattr(context, "aws_request_id", None),
        "remainingTimeMs": context.get_remaining_time_in_millis() if context else None,
    }
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}
