"""The stack's Invoke API token for tests and benchmarks that call a function host directly."""

from __future__ import annotations

from typing import Any

from payfn_shared.platform.config import load_settings

from infra.net.invoke import INVOKE_TOKEN_HEADER


def invoke_headers(**extra: str) -> dict[str, str]:
    """``extra`` plus ``X-Payfn-Invoke-Token`` when the environment has the stack's token."""
    token = load_settings().invoke_token
    return {**({INVOKE_TOKEN_HEADER: token} if token else {}), **extra}


def with_invoke_token(client: Any) -> Any:
    """A boto3 Lambda client that sends the token on every call (as the gateway does)."""
    headers = invoke_headers()

    def add(request: Any, **_: Any) -> None:
        for name, value in headers.items():
            request.headers[name] = value

    client.meta.events.register("before-sign.lambda.*", add)
    return client
