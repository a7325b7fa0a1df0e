"""The one HTTP policy every payfn listener applies (``PAYFN_HTTP_*``): sizes and times of a request."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from payfn_shared.platform.config import ConfigError, load_dataclass


@dataclass(frozen=True)
class Limits:
    """What one request may be (``PAYFN_HTTP_*``): sizes in bytes, times in seconds.

    ``max_body_bytes`` is each server's own (the gateway's, Lambda's 6 MB, …);
    ``idle_timeout`` 0 keeps an idle keep-alive connection open for ever.
    """

    ENV_PREFIX: ClassVar[str] = "PAYFN_HTTP_"

    max_body_bytes: int = 1024 * 1024
    max_head_bytes: int = 16 * 1024
    max_line_bytes: int = 8 * 1024
    request_timeout: float = 15.0
    idle_timeout: float = 75.0
    linger_seconds: float = 2.0
    max_queued: int = 64

    def validate(self) -> None:
        if min(self.max_body_bytes, self.max_head_bytes, self.max_line_bytes, self.max_queued) < 1:
            raise ConfigError("PAYFN_HTTP_MAX_* sizes must be at least 1")
        if self.max_line_bytes > self.max_head_bytes:
            raise ConfigError("PAYFN_HTTP_MAX_LINE_BYTES must not exceed PAYFN_HTTP_MAX_HEAD_BYTES")
        if self.request_timeout <= 0 or self.idle_timeout < 0 or self.linger_seconds < 0:
            raise ConfigError("PAYFN_HTTP_REQUEST_TIMEOUT must be > 0; _IDLE_TIMEOUT, _LINGER_SECONDS >= 0")


def load_limits(max_body_bytes: int) -> Limits:
    """The stack's one HTTP policy (``PAYFN_HTTP_*``) with a server's own body limit."""
    limits: Limits = load_dataclass(Limits)
    return replace(limits, max_body_bytes=max_body_bytes)
