"""Knobs of the function hosts (environment variables ``PAYFN_RUNTIME_*``, ``PAYFN_REGISTRY_*``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from payfn_shared.platform.config import ConfigError

#: Environments per core a function gets by default (see ``default_max_environments``).
ENVIRONMENTS_PER_CORE = 2


def default_max_environments() -> int:
    """Environments per function when neither the template nor the host says: two per core.

    The machine, not Lambda's regional quota, is the limit of a local host. An
    authorize spends about half of its wall time on the CPU and the rest waiting
    on MariaDB, Redis and the broker, so two environments per core keep the cores
    busy. Past that, extra environments add no throughput, only cold starts (a
    second of CPU each, paid at the worst moment) and switching between processes:
    on 2 cores at 200 authorize/s, 16 environments gave p95 2.3 s and 8.8 ms of
    stack CPU per request; 4 gave p95 61 ms and 7.6 ms. A request that finds every
    environment busy waits for one (``runtime_queue_wait_ms``) instead.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return ENVIRONMENTS_PER_CORE * cores


@dataclass(frozen=True)
class HostConfig:
    """Limits and intervals of a function host.

    - ``runtime_max_environments``: environments per function when the template sets
      no ``ReservedConcurrentExecutions`` (Lambda's regional limit stands behind it there;
      locally the machine is the limit: two per core, see ``default_max_environments``).
    - ``runtime_queue_wait_ms``: how long a request may wait for a busy function's
      environment before it is throttled; 0 throttles at once, exactly as Lambda. With
      environments sized to the cores, a burst queues here for milliseconds rather
      than starting environments the cores cannot run, so the default (1 s) is a
      bound on a real overload, not on a burst.
    - ``runtime_idle_seconds``: an environment unused this long is reaped.
    - ``runtime_code_check_seconds``: how often code folders are checked for changes.
    - ``runtime_init_timeout_seconds``: Lambda's limit on the init phase (10 s).
    - ``runtime_max_initialising``: cold starts in progress at once per function; a
      request beyond it waits (up to the init timeout, never throttled for it) for a
      warm environment or its own cold start (see ``FunctionPool``). 0 = no cap.
    - ``runtime_prewarm``: environments started per function when the host starts, so
      the first requests find them warm (Lambda's provisioned concurrency, in spirit).
    - ``registry_renew_seconds``: the registry lease renewal interval (Eureka's 30 s).
    - ``runtime_log_level``: the host's logging level (a ``logging`` level name).
    """

    runtime_max_environments: int = field(default_factory=default_max_environments)
    runtime_queue_wait_ms: int = 1000
    runtime_idle_seconds: float = 300.0
    runtime_code_check_seconds: float = 1.0
    runtime_init_timeout_seconds: float = 10.0
    runtime_max_initialising: int = 2
    runtime_prewarm: int = 0
    registry_renew_seconds: float = 30.0
    runtime_log_level: str = "INFO"

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
        if not isinstance(logging.getLevelName(self.runtime_log_level), int):
            raise ConfigError(f"PAYFN_RUNTIME_LOG_LEVEL={self.runtime_log_level!r} is not a logging level")
