"""Drill timings (env ``PAYFN_DRILL_*``) and the short ``--fast`` profile for CI.

Every bound a drill waits for is derived from these values or from the stack's own
configuration (the breaker's wait in OPEN, a lease duration), never hard-coded in a
step, so a slow machine is handled by configuration rather than by editing drills.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from payfn_shared.platform.config import ConfigError, load_dataclass

#: Template parameters a private drill stack sets (``PAYFN_PARAMETER_<Name>``) in the fast profile:
#: short breaker durations so OPEN → HALF_OPEN → CLOSED happens within seconds.
FAST_BREAKER_PARAMETERS = {
    "BreakerWaitDurationInOpenStateSeconds": "3",
    "BreakerSlowCallDurationThresholdSeconds": "2",
    "BreakerMaxWaitDurationInHalfOpenStateSeconds": "5",
}


@dataclass(frozen=True)
class DrillConfig:
    """Knobs of every drill.

    - ``drill_health_timeout_seconds``: how long the stack may take to answer at the start.
    - ``drill_warmup_requests`` / ``drill_outage_requests``: the seed's 5 normal and 6
      outage requests (5 successes + 6 failures = 54.5 % ≥ the 50 % threshold).
    - ``drill_breaker_wait_seconds``: the breaker's wait in OPEN; 0 = read it from
      ``PAYFN_PARAMETER_BreakerWaitDurationInOpenStateSeconds`` or the template default.
    - ``drill_recovery_slack_seconds``: added to the derived recovery bound (cache age,
      broker reconnects, the relay's first run).
    - ``drill_drain_timeout_seconds``: bound for the outbox to drain and the consumers
      to apply every event after a drill.
    - ``drill_outage_seconds``: how long load runs while a component is broken
      (Redis, database, host drills).
    - ``drill_load_rps``: request rate of the background load (host, consumer drills).
    - ``drill_request_timeout_seconds``: client timeout of one gateway request.
    - ``drill_broker_outage_seconds``: how long the broker-outage drill keeps the broker
      stopped (issue #5 asks for 60 s; ``--fast`` keeps it, ``--outage-seconds`` overrides).
    - ``drill_flow_rate``: authorize→capture→refund flows per second of its steady load
      (three requests each); modest, so that the outage, not the load, is under test.
    - ``drill_flow_merchants``: merchants the flows are spread over, so that per-merchant
      rate limits never answer 429 and blur what the outage did (32: few enough that the
      monitoring API's reconciliation is still asked per merchant, i.e. about this run only).
    - ``drill_steady_seconds``: load before the broker stops and after the breaker closed
      again, so the run covers the normal path on both sides of the outage.
    """

    drill_health_timeout_seconds: float = 90.0
    drill_warmup_requests: int = 5
    drill_outage_requests: int = 6
    drill_breaker_wait_seconds: float = 0.0
    drill_recovery_slack_seconds: float = 20.0
    drill_drain_timeout_seconds: float = 90.0
    drill_outage_seconds: float = 8.0
    drill_load_rps: float = 40.0
    drill_request_timeout_seconds: float = 20.0
    drill_broker_outage_seconds: float = 60.0
    drill_flow_rate: float = 3.0
    drill_flow_merchants: int = 32
    drill_steady_seconds: float = 10.0

    def validate(self) -> None:
        if self.drill_warmup_requests < 1 or self.drill_outage_requests < 1:
            raise ConfigError("PAYFN_DRILL_WARMUP_REQUESTS and _OUTAGE_REQUESTS must be at least 1")
        if self.drill_flow_merchants < 1:
            raise ConfigError("PAYFN_DRILL_FLOW_MERCHANTS must be at least 1")
        for name in ("drill_health_timeout_seconds", "drill_drain_timeout_seconds", "drill_outage_seconds",
                     "drill_load_rps", "drill_request_timeout_seconds", "drill_broker_outage_seconds",
                     "drill_flow_rate", "drill_steady_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"PAYFN_{name.upper()} must be positive")
        if self.drill_breaker_wait_seconds < 0 or self.drill_recovery_slack_seconds < 0:
            raise ConfigError("PAYFN_DRILL_BREAKER_WAIT_SECONDS and _RECOVERY_SLACK_SECONDS must be >= 0")

    def fast(self) -> DrillConfig:
        """The CI profile: shorter outages and bounds (the breaker durations come from the stack).

        The broker-outage drill keeps its outage: its length is what that drill proves.
        """
        return replace(self, drill_outage_seconds=min(self.drill_outage_seconds, 4.0),
                       drill_steady_seconds=min(self.drill_steady_seconds, 5.0),
                       drill_drain_timeout_seconds=min(self.drill_drain_timeout_seconds, 60.0),
                       drill_recovery_slack_seconds=min(self.drill_recovery_slack_seconds, 15.0))


def load_drill_config(fast: bool = False, outage_seconds: float | None = None) -> DrillConfig:
    """The drill timings from the environment; ``outage_seconds`` (``--outage-seconds``) sets how
    long the component stays broken in every drill that has a timed outage."""
    config: DrillConfig = load_dataclass(DrillConfig)
    config = config.fast() if fast else config
    if outage_seconds is not None:
        config = replace(config, drill_outage_seconds=outage_seconds,
                         drill_broker_outage_seconds=outage_seconds)
        config.validate()
    return config
