"""Knobs of the function hosts (environment variables ``PAYFN_RUNTIME_*``, ``PAYFN_REGISTRY_*``)."""

from __future__ import annotations

from dataclasses import dataclass

from payfn_shared.config import ConfigError


@dataclass(frozen=True)
class HostConfig:
    """Limits and intervals of a function host.

    - ``runtime_max_environments``: environments per function when the template sets
      no ``ReservedConcurrentExecutions`` (Lambda's regional limit stands behind it there;
      locally the machine is the limit).
    - ``runtime_queue_wait_ms``: how long a request may wait for a busy function's
      environment before it is throttled; 0 throttles at once, exactly as Lambda.
    - ``runtime_idle_seconds``: an environment unused this long is reaped.
    - ``runtime_code_check_seconds``: how often code folders are checked for changes.
    - ``runtime_init_timeout_seconds``: Lambda's limit on the init phase (10 s).
    - ``runtime_max_initialising``: cold starts in progress at once per function; a
      request beyond it waits (up to the init timeout, never throttled for it) for a
      warm environment or its own cold start (see ``FunctionPool``). 0 = no cap.
    - ``runtime_prewarm``: environments started per function when the host starts, so
      the first requests find them warm (Lambda's provisioned concurrency, in spirit).
    - ``registry_renew_seconds``: the registry lease renewal interval (Eureka's 30 s).
    """

    runtime_max_environments: int = 16
    runtime_queue_wait_ms: int = 100
    runtime_idle_seconds: float = 300.0
    runtime_code_check_seconds: float = 1.0
    runtime_init_timeout_seconds: float = 10.0
    runtime_max_initialising: int = 2
    runtime_prewarm: int = 0
    registry_renew_seconds: float = 30.0

    def validate(self) -> None:
        if self.runtime_max_environments < 1:
            raise ConfigError("PAYFN_RUNTIME_MAX_ENVIRONMENTS must be at least 1")
        if self.runtime_queue_wait_ms < 0:
            raise ConfigError("PAYFN_RUNTIME_QUEUE_WAIT_MS must not be negative")
        if self.runtime_max_initialising < 0:
            raise ConfigError("PAYFN_RUNTIME_MAX_INITIALISING must not be negative")
        if self.runtime_prewarm < 0:
            raise ConfigError("PAYFN_RUNTIME_PREWARM must not be negative")
        for name in ("runtime_idle_seconds", "runtime_code_check_seconds", "runtime_init_timeout_seconds",
                     "registry_renew_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"PAYFN_{name.upper()} must be positive")
