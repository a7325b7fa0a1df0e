"""Knobs of the monitoring layer (env ``PAYFN_MONITORING_*``).

Every limit here exists to keep a monitoring request cheap and bounded: the
monitoring API may be called while the platform is already in trouble, and it
must never become the thing that makes it worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from payfn_shared.platform.config import ConfigError, load_dataclass

CONFIG_PREFIX = "PAYFN_MONITORING_"


@dataclass(frozen=True)
class MonitoringConfig:
    """Row caps, timeouts and windows of the monitoring reports."""

    ENV_PREFIX: ClassVar[str] = CONFIG_PREFIX

    statement_timeout_seconds: float = 5.0
    payments_default_limit: int = 20
    payments_max_limit: int = 100
    outbox_stuck_rows: int = 50
    reconciliation_max_payments: int = 50_000
    reconciliation_grace_seconds: int = 60
    report_list_limit: int = 100
    ttl_scan_max_keys: int = 10_000
    prometheus_timeout_seconds: float = 3.0
    kafka_timeout_ms: int = 2000

    def validate(self) -> None:
        if self.statement_timeout_seconds <= 0:
            raise ConfigError(f"{CONFIG_PREFIX}STATEMENT_TIMEOUT_SECONDS must be > 0")
        if not 1 <= self.payments_default_limit <= self.payments_max_limit:
            raise ConfigError(f"{CONFIG_PREFIX}PAYMENTS_DEFAULT_LIMIT must be in [1, PAYMENTS_MAX_LIMIT]")
        for name in (
            "outbox_stuck_rows",
            "reconciliation_max_payments",
            "report_list_limit",
            "ttl_scan_max_keys",
            "kafka_timeout_ms",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{CONFIG_PREFIX}{name.upper()} must be >= 1")
        if self.reconciliation_grace_seconds < 0 or self.prometheus_timeout_seconds <= 0:
            raise ConfigError(
                f"{CONFIG_PREFIX}RECONCILIATION_GRACE_SECONDS >= 0 and "
                f"{CONFIG_PREFIX}PROMETHEUS_TIMEOUT_SECONDS > 0 required"
            )


def load_monitoring_config() -> MonitoringConfig:
    config: MonitoringConfig = load_dataclass(MonitoringConfig)
    return config
