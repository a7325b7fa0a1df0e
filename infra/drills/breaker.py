"""The circuit-breaker drill: the broker stopped, the kafka-publisher breaker opens and closes again.

The seed's 9-step scenario through the gateway, plus what the outbox promises
afterwards: payments made while the broker is away wait in the outbox and are
published once it is back; capture and refund work after recovery.
"""

from __future__ import annotations

import time

from payfn_shared.payments.publisher import BREAKER_NAME
from payfn_shared.platform.breaker import BreakerConfig, RedisCircuitBreaker
from payfn_shared.platform.config import load_dataclass

from infra.drills.client import Answer
from infra.drills.steps import (
    CLOSED,
    HALF_OPEN,
    HALF_OPEN_PARAMETER,
    OPEN,
    WAIT_PARAMETER,
    Drill,
    breaker_state,
    finish,
    latencies,
    open_drill,
    poll,
    statuses,
    unpublished,
    warm_up,
)
from infra.drills.target import DrillTarget
from infra.runtime.functions import load_definitions, template_parameters
from infra.sam.template import TEMPLATE_PATH, load_template
from infra.stack.process import port_open

AUTHORIZE_FUNCTION = "AuthorizeFunction"


def surely_opens(snapshot: dict[str, object], config: BreakerConfig, successes: int, failures: int) -> bool:
    """Whether ``successes`` then ``failures`` calls open a CLOSED breaker whatever its window holds.

    A count-based window keeps the last ``sliding_window_size`` calls; which of the calls
    already there the new ones push out is not known, so the worst case is assumed (the
    failures go first). On a fresh breaker this is the seed's 5 + 6 = 54.5 %.
    """
    size = config.sliding_window_size
    buffered = int(snapshot.get("numberOfBufferedCalls", 0))  # type: ignore[call-overload]
    failed = int(snapshot.get("numberOfFailedCalls", 0))  # type: ignore[call-overload]
    calls = buffered + successes + failures
    evicted = max(0, calls - size)
    in_window = min(calls, size)
    worst_failed = min(in_window, max(0, failed - evicted) + failures)
    rate = 100 * worst_failed / in_window if in_window else 0.0
    return in_window >= config.closed_minimum and rate >= config.failure_rate_threshold


def ingest_breaker_config(target: DrillTarget) -> BreakerConfig:
    """The kafka-publisher breaker's settings as the ingest functions see them (their environment)."""
    template = load_template(TEMPLATE_PATH, template_parameters(target.settings))
    definition = load_definitions(template, TEMPLATE_PATH.parent, names=[AUTHORIZE_FUNCTION])[0]
    config: BreakerConfig = load_dataclass(BreakerConfig, env=definition.variables)
    return config


def prepare_breaker_window(drill: Drill) -> None:
    """Say what the breaker's window holds; reset it (an admin transition) when the seed's outage
    could not open it, e.g. on a stack whose window is already full of successes."""
    report, config = drill.report, drill.config
    breaker = ingest_breaker_config(drill.target)
    before = drill.client.breaker().body
    report.info("breaker window before the drill",
                f"{before.get('numberOfBufferedCalls')} of {breaker.sliding_window_size} calls buffered, "
                f"{before.get('numberOfFailedCalls')} failed (rate {before.get('failureRate')} %); opens at "
                f"{breaker.failure_rate_threshold:g} % of at least {breaker.closed_minimum} calls")
    if surely_opens(before, breaker, config.drill_warmup_requests, config.drill_outage_requests):
        return
    RedisCircuitBreaker(BREAKER_NAME, breaker).reset()
    after = drill.client.breaker().body
    report.check("breaker window reset for the drill",
                 f"{config.drill_warmup_requests} successes + {config.drill_outage_requests} failures cannot "
                 "open the window as it is: admin transition to CLOSED, empty window",
                 after.get("state") == CLOSED and after.get("numberOfBufferedCalls") == 0,
                 f"snapshot {after}")


def drill_breaker(drill: Drill) -> None:
    """The seed's 9-step circuit-breaker scenario, plus what the outbox promises afterwards."""
    report, client, config, target = drill.report, drill.client, drill.config, drill.target
    open_drill(drill)
    warm_up(drill)
    state = breaker_state(drill)
    report.check("initial state", "kafka-publisher breaker is CLOSED", state == CLOSED, state)
    prepare_breaker_window(drill)

    warm = [client.authorize(drill.merchant) for _ in range(config.drill_warmup_requests)]
    report.check(f"{len(warm)} normal authorizes", "all 200 REQUESTED",
                 all(a.status == 200 and a.body.get("status") == "REQUESTED" for a in warm),
                 f"statuses {statuses(warm)}; latency {latencies(warm)}")
    warm_ids = [a.body["paymentId"] for a in warm]
    left, took = poll(lambda: unpublished(drill, warm_ids), lambda n: n == 0, 10)
    report.check("normal path publishes at once",
                 "their outbox rows are published (by ingest, before the relay)",
                 left == 0, f"{left} unpublished after {took:.1f} s")

    clean = target.stop("kafka")
    drill.cleanups.append(("start the broker again", lambda: target.start("kafka")))
    kafka = target.component("kafka")
    is_open, _ = poll(lambda: port_open(kafka.host, kafka.port), lambda o: not o, 5)
    report.check("broker stopped (supervisor, SIGTERM)", "kafka stopped cleanly and its port is closed",
                 clean and not is_open, f"clean={clean}, port {kafka.port} closed={not is_open}")

    outage = [client.authorize(drill.merchant) for _ in range(config.drill_outage_requests)]
    report.check(f"{len(outage)} requests during the outage", "all 200: committed with their outbox rows",
                 all(a.status == 200 for a in outage),
                 f"statuses {statuses(outage)}; latency {latencies(outage)}")
    outage_ids = [a.body["paymentId"] for a in outage]
    waiting = unpublished(drill, outage_ids)
    report.check("outage payments wait in the outbox", "their outbox rows are unpublished",
                 waiting == len(outage_ids), f"{waiting}/{len(outage_ids)} unpublished")

    state, took = poll(lambda: breaker_state(drill), lambda s: s in (OPEN, HALF_OPEN), 10)
    report.check("breaker opened", "state is OPEN or HALF_OPEN", state in (OPEN, HALF_OPEN),
                 f"{state} after {took:.1f} s; snapshot {client.breaker().body}")
    during = client.authorize(drill.merchant)
    report.check("request while OPEN", "200 (the payment is committed, publishing is left to the relay)",
                 during.status == 200, f"HTTP {during.status} in {during.seconds * 1000:.0f} ms")

    state_name = target.start("kafka")
    drill.cleanups.pop()
    report.check("broker started again (supervisor)", "kafka started, healthy, topics provisioned",
                 state_name in ("started", "running"), state_name)

    wait = config.drill_breaker_wait_seconds or drill.parameter(WAIT_PARAMETER)
    half_open = drill.parameter(HALF_OPEN_PARAMETER)
    bound = wait + half_open + config.drill_recovery_slack_seconds
    recovery: list[Answer] = []

    def recover() -> str:
        recovery.append(client.authorize(drill.merchant))
        return breaker_state(drill)

    state, took = poll(recover, lambda s: s == CLOSED, bound, interval=1.0)
    report.check("recovery", f"authorizes until CLOSED within wait {wait:g} s + half-open {half_open:g} s"
                 f" + slack {config.drill_recovery_slack_seconds:g} s = {bound:g} s; every one 200",
                 state == CLOSED and all(a.status == 200 for a in recovery),
                 f"{state} after {took:.1f} s and {len(recovery)} request(s); statuses {statuses(recovery)}")
    time.sleep(0.5)
    state = breaker_state(drill)
    report.check("final state", "breaker is CLOSED", state == CLOSED, state)

    moved = []
    for payment_id in outage_ids[:2]:
        moved.append(client.capture(drill.merchant, payment_id))
    moved.append(client.refund(drill.merchant, outage_ids[0]))
    report.check("capture and refund after recovery", "200 COMPLETED, COMPLETED, REFUNDED",
                 [(a.status, a.body.get("status")) for a in moved]
                 == [(200, "COMPLETED"), (200, "COMPLETED"), (200, "REFUNDED")],
                 f"statuses {statuses(moved)}; latency {latencies(moved)}")
    finish(drill)
