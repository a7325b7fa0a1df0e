"""The gateway's own knobs (``PAYFN_GATEWAY_*``), loaded with ``payfn_shared.platform.config``."""

from __future__ import annotations

from dataclasses import dataclass

from payfn_shared.platform.config import ConfigError


@dataclass(frozen=True)
class GatewayConfig:
    """Limits and timings of the edge.

    ``gateway_max_body_bytes`` is checked before the body is read (413 on the
    Content-Length alone). ``gateway_integration_timeout`` caps the wait for a
    function as API Gateway's 29 s integration timeout does; the function's own
    Timeout (plus a second for the host) applies when shorter.
    ``gateway_probe_interval``: how often a quarantined instance (refused or dropped a
    connection) is probed with a TCP connect; it stays out of rotation until a probe
    succeeds or the registry drops it (see ``payfn_shared.platform.registry.discovery``).
    """

    gateway_max_body_bytes: int = 1024 * 1024
    gateway_refresh_interval: float = 2.0
    gateway_probe_interval: float = 1.0
    gateway_pool_size: int = 64
    gateway_connect_timeout: float = 1.0
    gateway_integration_timeout: float = 29.0
    gateway_access_log: bool = True
    gateway_register: bool = True
    gateway_renew_seconds: float = 30.0

    def validate(self) -> None:
        if self.gateway_max_body_bytes < 1:
            raise ConfigError("PAYFN_GATEWAY_MAX_BODY_BYTES must be ≥ 1")
        for name in ("gateway_refresh_interval", "gateway_connect_timeout", "gateway_integration_timeout",
                     "gateway_renew_seconds", "gateway_probe_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"PAYFN_{name.upper()} must be > 0")
        if self.gateway_pool_size < 1:
            raise ConfigError("PAYFN_GATEWAY_POOL_SIZE must be ≥ 1")
