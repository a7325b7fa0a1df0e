"""The drill run and the steps every drill shares.

Every drill starts with the same two steps (the gateway and the service answer; the
event flow runs) and ends with :func:`infra.drills.consistency.check_consistency`.
Whatever a drill stops or kills is restored in its cleanup even when a step failed,
so a failed drill never leaves a component of the stack down.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from infra.drills.client import Answer, GatewayClient
from infra.drills.config import DrillConfig
from infra.drills.consistency import check_consistency, connect, expand_in, in_list
from infra.drills.report import Report
from infra.drills.target import POLLER_APP, SCHEDULER_APP, DrillTarget
from infra.runtime.functions import parameter_overrides

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "CLOSED", "OPEN", "HALF_OPEN"
WAIT_PARAMETER = "BreakerWaitDurationInOpenStateSeconds"
HALF_OPEN_PARAMETER = "BreakerMaxWaitDurationInHalfOpenStateSeconds"


@dataclass
class Drill:
    """Everything one drill run uses; ``cleanups`` run in reverse order at the end, always."""

    target: DrillTarget
    config: DrillConfig
    report: Report
    client: GatewayClient
    merchant: str = field(default_factory=lambda: f"DRILL{uuid.uuid4().hex[:12]}")
    cleanups: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def parameter(self, name: str) -> float:
        """A template parameter as the function hosts see it (``PAYFN_PARAMETER_<Name>`` or default)."""
        value = parameter_overrides().get(name) or self.target.supervisor.template.parameters[name]
        return float(value)


def poll(probe: Callable[[], T], done: Callable[[T], bool], timeout: float,
         interval: float = 0.25) -> tuple[T, float]:
    """Call ``probe`` until ``done(value)`` or ``timeout``; returns the last value and the time taken."""
    started = time.monotonic()
    while True:
        value = probe()
        elapsed = time.monotonic() - started
        if done(value) or elapsed >= timeout:
            return value, elapsed
        time.sleep(interval)


def breaker_state(drill: Drill) -> str:
    answer = drill.client.breaker()
    return str(answer.body.get("state")) if answer.ok else f"HTTP {answer.status}"


def statuses(answers: list[Answer]) -> str:
    return ", ".join(str(a.status) for a in answers)


def latencies(answers: list[Answer]) -> str:
    return ", ".join(f"{a.seconds * 1000:.0f}" for a in answers) + " ms"


def open_drill(drill: Drill) -> None:
    """Steps every drill starts with: the stack answers, the event flow runs."""
    report, timeout = drill.report, drill.config.drill_health_timeout_seconds
    health, took = poll(lambda: drill.client.get_json("/actuator/health").status, lambda s: s == 200, timeout)
    report.check("gateway healthy", f"GET /actuator/health = 200 within {timeout:.0f} s", health == 200,
                 f"HTTP {health} after {took:.1f} s")
    answer, took = poll(drill.client.breaker, lambda a: a.ok, timeout)
    report.check("INGEST-SERVICE answers through the gateway",
                 "GET /api/circuit-breaker/kafka-publisher = 200",
                 answer.ok, f"HTTP {answer.status} after {took:.1f} s: {str(answer.body)[:120]}")
    started = drill.target.ensure_event_flow(timeout)
    drill.cleanups.append(("stop the drill's event-flow helpers", drill.target.stop_helpers))
    running = {app: len(drill.target.instances(app)) for app in (SCHEDULER_APP, POLLER_APP)}
    report.check("event flow runs", "outbox relay scheduler and Kafka event-source poller registered UP",
                 all(running.values()),
                 f"instances {running}" + (f"; started by the drill (not part of the stack): {started}"
                                            if started else "; both part of the stack"))


def warm_up(drill: Drill) -> None:
    """The seed's warm-up: one authorize (retried with its key) so the timed steps meet a warm
    environment; a cold start costs seconds on a busy machine and may time out."""
    timeout = drill.config.drill_health_timeout_seconds
    started = time.monotonic()
    answer, retries = drill.client.authorize_retrying(drill.merchant, started + timeout)
    drill.report.check("warm-up", f"an authorize answers 200 within {timeout:.0f} s (retried with its key)",
                       answer.status == 200,
                       f"HTTP {answer.status} after {time.monotonic() - started:.1f} s and {retries} retries")


def unpublished(drill: Drill, payment_ids: list[str]) -> int:
    """How many of these payments' outbox rows are not published yet."""
    connection = connect(drill.target.settings)
    try:
        with connection.cursor() as cursor:
            marks, params = in_list(payment_ids)
            cursor.execute(expand_in("SELECT COUNT(*) AS n FROM outbox_event WHERE published_at IS NULL"
                                     " AND aggregate_id IN ($)", marks), params)
            return int(cursor.fetchone()["n"])
    finally:
        connection.close()


def finish(drill: Drill, *, read_kafka: bool = True) -> None:
    check_consistency(drill.report, drill.target.settings, drill.client,
                      drill.config.drill_drain_timeout_seconds, read_kafka=read_kafka)
