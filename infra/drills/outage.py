"""The broker-outage drill: the broker stopped for a minute under a steady flow of payments.

Issue #5's must-show, end to end through the gateway: authorize → capture → refund
flows arrive at a steady rate (open model); the broker is stopped for
``drill_broker_outage_seconds`` (60 s) while they keep arriving, then started; the load
runs on until the breaker has closed again and a little longer. Every answer must be
2xx (a runtime throttle retried to success excepted); afterwards every outbox row must
be published and every event applied exactly once (database counts, projections and
each event read back from Kafka match the completed flows), and every consumer group's
committed offsets must reach the end of its topics.

Why it looks like this (open model, retries, breaker sampling, drain time, Kafka
read-back): docs/DRILLS.md#infradrillsoutage
"""

from __future__ import annotations

import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from payfn_shared.payments.consumers import BALANCE_CONSUMER, LEDGER_CONSUMER
from payfn_shared.payments.events import EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_REFUNDED
from payfn_shared.platform.backoff import Backoff

from infra.drills.client import CONNECTION_ERROR, RETRYABLE, Answer, GatewayClient
from infra.drills.consistency import (
    EVENTS_BY_STATUS,
    LEDGER_CONSUMED,
    TRANSITIONS_BY_STATUS,
    connect,
    consumer_lag,
    expand_in,
    in_list,
    select_in,
)
from infra.drills.load import (
    THROTTLE_MESSAGE,
    BlockingLoad,
    LoadResult,
    Sample,
    acceptable,
    describe,
    timeline,
)
from infra.drills.report import DrillFailed
from infra.drills.steps import (
    CLOSED,
    HALF_OPEN_PARAMETER,
    OPEN,
    WAIT_PARAMETER,
    Drill,
    breaker_state,
    finish,
    open_drill,
    poll,
)
from infra.eventsource.sources import kafka_sources
from infra.stack.process import port_open

#: Seconds an ingest request holds its execution environment once the broker is gone and
#: the breaker has not opened yet: the publish timeout (1.5 s) plus the request itself,
#: about doubled on a busy 2-core machine (measured: 2-4 s in the outage's first seconds).
OUTAGE_REQUEST_SECONDS = 3.0
#: How often the report says how the outage and the recovery are going.
PROGRESS_SECONDS = 10.0
EVENT_TYPES = (EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_REFUNDED)
JITTER = random.SystemRandom()
#: Exponential backoff with full jitter (as the AWS SDKs retry throttles): retries of
#: many clients must not arrive together and keep the function saturated.
CLIENT_BACKOFF = Backoff(initial=0.4, maximum=4.0, jitter=(0.0, 1.0))


@dataclass
class FlowLoad:
    """Open-model authorize → capture → refund flows at ``rate``/s, on ``workers`` threads."""

    client: GatewayClient
    merchants: Sequence[str]
    rate: float
    workers: int = 64
    retry_seconds: float = 30.0
    resolved_by_lookup: int = 0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._load = BlockingLoad(self._flow, self.workers, 3 * self.retry_seconds + 3 * self.client.timeout,
                                  self.client.close)

    @property
    def result(self) -> LoadResult:
        return self._load.result

    def start(self) -> None:
        self._load.start("flows", self.rate)

    def stop(self) -> bool:
        """Stop the arrivals and let every arrived flow finish; True when all workers ended."""
        return self._load.stop()

    def burst(self, count: int) -> None:
        """Run ``count`` flows at the same moment (each on its own worker) and wait for them."""
        self._load.burst("burst", count)

    def _fail(self, index: int, step: str, observed: str) -> bool:
        self.result.fail(f"flow {index} {step}: {observed}")
        return False

    def _call(self, operation: str, send: Callable[[], Answer], deadline: float) -> tuple[Answer, int]:
        """Send, retrying what a client may retry (same body, same key) until ``deadline``."""
        attempts = 0
        while True:
            at = time.monotonic()
            answer = send()
            attempts += 1
            with self._lock:
                code = str(answer.body.get("code") or answer.body.get("message") or "")
                self.result.note(Sample(at, operation, answer.status, answer.seconds, code))
            retryable = answer.status in RETRYABLE or answer.status == CONNECTION_ERROR
            if not retryable or time.monotonic() >= deadline:
                return answer, attempts
            time.sleep(CLIENT_BACKOFF.delay(attempts, JITTER))

    def _look_up(self, merchant: str, payment_id: str, deadline: float) -> Answer:
        """The payment as the API has it: the truth after a transition whose outcome was unknown."""
        answer, _ = self._call("lookup", lambda: self.client.get_json(
            f"/api/payments/{payment_id}?merchantId={merchant}"), deadline)
        if answer.ok:
            self.client.ledger.transitioned(payment_id, answer)
            with self._lock:
                self.resolved_by_lookup += 1
        return answer

    def _flow(self, index: int, _: LoadResult) -> bool:
        merchant = self.merchants[index % len(self.merchants)]
        key = f"outage-{self.run_id}-{index}"
        amount = 1000 + (index * 37) % 9000
        deadline = time.monotonic() + self.retry_seconds
        answer, _ = self._call("authorize", lambda: self.client.authorize(merchant, key, amount), deadline)
        if answer.status != 200:
            return self._fail(index, "authorize", f"HTTP {answer.status} {answer.body}")
        payment_id = str(answer.body["paymentId"])
        steps: tuple[tuple[str, str, Callable[[], Answer]], ...] = (
            ("capture", "COMPLETED", lambda: self.client.capture(merchant, payment_id)),
            ("refund", "REFUNDED", lambda: self.client.refund(merchant, payment_id, "broker outage drill")),
        )
        for operation, expected, send in steps:
            answer, attempts = self._call(operation, send, deadline)
            if answer.status == 409 and attempts > 1:
                answer = self._look_up(merchant, payment_id, deadline)
            if answer.status != 200 or answer.body.get("status") != expected:
                return self._fail(index, operation, f"HTTP {answer.status} {answer.body}")
        return True


def warm_parallel(rate: float) -> int:
    """Warm execution environments each ingest function needs when the outage begins.

    Until the breaker opens, every request waits on the dead broker for the publish
    timeout, so each function (one call per flow) holds about ``rate`` ×
    ``OUTAGE_REQUEST_SECONDS`` environments at once. Lambda would add them in about a
    second; a cold start on a busy shared machine takes several (up to the 10 s init
    limit), and what the drill is about is the outbox, not the emulator's scaling:
    so they exist, warm, before the broker stops (provisioned concurrency, in spirit).
    """
    return max(4, math.ceil(rate * OUTAGE_REQUEST_SECONDS))


def warm_flows(drill: Drill, merchants: Sequence[str]) -> None:
    """Run :func:`warm_parallel` flows at the same moment, so that as many environments of
    authorize, capture and refund are started, and warm, before the load begins."""
    parallel = warm_parallel(drill.config.drill_flow_rate)
    warm = FlowLoad(drill.client, merchants, rate=parallel, workers=parallel,
                    retry_seconds=drill.config.drill_health_timeout_seconds)
    started = time.monotonic()
    warm.burst(parallel)
    answers = warm.result.answers()
    drill.report.check("warm-up", f"{parallel} authorize→capture→refund flows at once (warm environments"
                       " for the outage's first seconds) complete",
                       warm.result.completed == parallel and not warm.result.failures,
                       f"{warm.result.completed}/{parallel} flows in {time.monotonic() - started:.1f} s"
                       f" {warm.result.failures[:2]}; {describe(answers)}")


def outbox_backlog(drill: Drill, merchants: Sequence[str], up_to_id: int | None = None) -> tuple[int, int]:
    """(unpublished outbox rows of these merchants [with id ≤ ``up_to_id``], their highest outbox id)."""
    row, = select_in(
        drill.target.settings,
        "SELECT COALESCE(SUM(o.published_at IS NULL AND o.id <= %s), 0) AS waiting,"
        " COALESCE(MAX(o.id), 0) AS last FROM outbox_event o JOIN payment p ON p.id = o.aggregate_id"
        " WHERE p.merchant_id IN ($)", merchants, (up_to_id if up_to_id is not None else 2**62,))
    return int(row["waiting"]), int(row["last"])


#: Each count issue #5 names: SQL over the run's merchants (``IN ($)``) and its extra parameters.
COUNT_QUERIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "payments": ("SELECT COUNT(*) AS n FROM payment p WHERE p.merchant_id IN ($)", ()),
    "refunded payments": ("SELECT COUNT(*) AS n FROM payment p WHERE p.merchant_id IN ($)"
                          " AND p.status = 'REFUNDED'", ()),
    **{f"{transition} entries": (
        "SELECT COUNT(*) AS n FROM ledger_entry l JOIN payment p ON p.id = l.payment_id"
        " WHERE p.merchant_id IN ($) AND l.transition = %s", (transition,))
       for transition in ("CAPTURE", "REFUND")},
    "outbox rows": ("SELECT COUNT(*) AS n FROM outbox_event o JOIN payment p ON p.id = o.aggregate_id"
                    " WHERE p.merchant_id IN ($)", ()),
    "distinct eventIds": ("SELECT COUNT(DISTINCT o.event_id) AS n FROM outbox_event o"
                          " JOIN payment p ON p.id = o.aggregate_id WHERE p.merchant_id IN ($)", ()),
    "published rows": ("SELECT COUNT(*) AS n FROM outbox_event o JOIN payment p ON p.id = o.aggregate_id"
                       " WHERE p.merchant_id IN ($) AND o.published_at IS NOT NULL", ()),
    **{f"{event_type} rows": (
        "SELECT COUNT(*) AS n FROM outbox_event o JOIN payment p ON p.id = o.aggregate_id"
        " WHERE p.merchant_id IN ($) AND o.event_type = %s", (event_type,)) for event_type in EVENT_TYPES},
    **{f"{consumer} applied": (
        "SELECT COUNT(*) AS n FROM processed_event pe JOIN outbox_event o ON o.event_id = pe.event_id"
        " JOIN payment p ON p.id = o.aggregate_id WHERE p.merchant_id IN ($) AND pe.consumer = %s",
        (consumer,)) for consumer in (BALANCE_CONSUMER, LEDGER_CONSUMER)},
}
TOTALS_QUERY = ("SELECT COALESCE(SUM(authorized_total), 0) AS authorized_total,"
                " COALESCE(SUM(captured_total), 0) AS captured_total,"
                " COALESCE(SUM(refunded_total), 0) AS refunded_total"
                " FROM merchant_balance WHERE merchant_id IN ($)")


def exact_counts(drill: Drill, merchants: Sequence[str]) -> dict[str, int]:
    """Every count issue #5 names, straight from the database, for the run's merchants."""
    connection = connect(drill.target.settings)
    try:
        marks, params = in_list(merchants)
        counts: dict[str, int] = {}
        with connection.cursor() as cursor:
            for name, (query, extra) in COUNT_QUERIES.items():
                cursor.execute(expand_in(query, marks), (*params, *extra))
                counts[name] = int(cursor.fetchone()["n"])
            cursor.execute(expand_in(TOTALS_QUERY, marks), params)
            counts.update({name: int(value) for name, value in cursor.fetchone().items()})
        return counts
    finally:
        connection.close()


def expected_counts(drill: Drill) -> dict[str, int]:
    """What the clients' 2xx answers imply, from the last status each payment was reported in
    (a flow is one REFUNDED payment: a CAPTURE and a REFUND entry, three events, applied by
    the projection three times and by the ledger consumer twice)."""
    payments = list(drill.client.ledger.payments.values())
    want: Counter[str] = Counter(payments=len(payments))
    for payment in payments:
        want["refunded payments"] += payment.status == "REFUNDED"
        for transition in TRANSITIONS_BY_STATUS[payment.status]:
            want[f"{transition} entries"] += 1
        for event_type in EVENTS_BY_STATUS[payment.status]:
            want[f"{event_type} rows"] += 1
            want[f"{BALANCE_CONSUMER} applied"] += 1
            want[f"{LEDGER_CONSUMER} applied"] += event_type in LEDGER_CONSUMED
        want["authorized_total"] += payment.amount
        want["captured_total"] += payment.amount if payment.status in ("COMPLETED", "REFUNDED") else 0
        want["refunded_total"] += payment.amount if payment.status == "REFUNDED" else 0
    events = sum(want[f"{event_type} rows"] for event_type in EVENT_TYPES)
    want.update({"outbox rows": events, "distinct eventIds": events, "published rows": events})
    return {name: want[name] for name in (*COUNT_QUERIES, "authorized_total", "captured_total",
                                          "refunded_total")}


def consumer_groups(drill: Drill) -> dict[str, tuple[str, ...]]:
    """The consumer groups of the template's Kafka event sources and the topics they read."""
    groups: dict[str, tuple[str, ...]] = {}
    for source in kafka_sources(drill.target.supervisor.template, drill.target.settings.kafka_bootstrap):
        if source.enabled:
            groups[source.group_id] = tuple(sorted({*groups.get(source.group_id, ()), *source.topics}))
    return groups


def _after(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def drill_broker_outage(drill: Drill) -> None:
    """Broker stopped for ``drill_broker_outage_seconds`` under steady flows; exact counts after."""
    report, client, config, target = drill.report, drill.client, drill.config, drill.target
    outage, steady = config.drill_broker_outage_seconds, config.drill_steady_seconds
    open_drill(drill)
    merchants = [f"{drill.merchant}-{number:03d}" for number in range(config.drill_flow_merchants)]
    warm_flows(drill, merchants)
    state = breaker_state(drill)
    report.check("initial state", "kafka-publisher breaker is CLOSED", state == CLOSED, state)

    load = FlowLoad(client, merchants, config.drill_flow_rate,
                    retry_seconds=max(30.0, 1.5 * config.drill_request_timeout_seconds))
    drill.cleanups.append(("stop the flow load", load.stop))
    load_started = time.monotonic()
    load.start()
    flows = load.result
    time.sleep(steady)
    before = flows.answers(load_started, time.monotonic())
    report.check("steady flows before the outage",
                 f"{config.drill_flow_rate:g} authorize→capture→refund flows/s over {len(merchants)}"
                 " merchants; every answer 2xx",
                 flows.completed > 0 and all(s.ok for s in before),
                 f"{flows.completed} flows completed in {steady:g} s; {describe(before)}")

    stopped_at = time.monotonic()
    clean = target.stop("kafka")
    drill.cleanups.append(("start the broker again", lambda: target.start("kafka")))
    kafka = target.component("kafka")
    closed, _ = poll(lambda: not port_open(kafka.host, kafka.port), bool, 5)
    report.check("broker stopped (supervisor, SIGTERM)", "kafka stopped cleanly and its port is closed",
                 clean and closed, f"clean={clean}, port {kafka.port} closed={closed}; flows keep arriving")

    seen: Counter[str] = Counter()
    first_open: float | None = None
    next_progress = stopped_at + PROGRESS_SECONDS
    while (now := time.monotonic()) < stopped_at + outage:
        state = breaker_state(drill)
        seen[state] += 1
        if state == OPEN and first_open is None:
            first_open = now - stopped_at
        if now >= next_progress:
            next_progress += PROGRESS_SECONDS
            waiting, _ = outbox_backlog(drill, merchants)
            report.progress(f"broker down {now - stopped_at:.0f}/{outage:g} s: {flows.completed} flows"
                            f" completed, {flows.in_flight} in flight, breaker {state},"
                            f" {waiting} outbox rows waiting")
        time.sleep(max(0.0, min(1.0, stopped_at + outage - time.monotonic())))
    waiting, backlog_mark = outbox_backlog(drill, merchants)
    report.check("breaker opened during the outage",
                 "kafka-publisher seen OPEN (publishing refused at once, not waited on)", seen[OPEN] > 0,
                 f"first OPEN {_after(first_open)} after the stop; states sampled each second {dict(seen)}")
    report.check("outage events wait in the outbox", "outbox rows unpublished when the broker comes back",
                 waiting > 0, f"{waiting} unpublished outbox rows after {outage:g} s without a broker")

    restarting = time.monotonic()
    started_state = target.start("kafka")
    restarted_at = time.monotonic()
    drill.cleanups.pop()
    report.check("broker started again (supervisor)", "kafka started, healthy, topics provisioned",
                 started_state in ("started", "running"),
                 f"{started_state} in {restarted_at - restarting:.1f} s;"
                 f" broker down {restarted_at - stopped_at:.1f} s")
    during = flows.answers(stopped_at, restarted_at)
    arrived = flows.arrived(stopped_at, restarted_at)
    planned = config.drill_flow_rate * (restarted_at - stopped_at)
    throttled = sum(s.throttled for s in during)
    report.check("every request during the outage answered 2xx",
                 "no 5xx, no timeout, no rate limit, no conflict (runtime throttles aside, retried with the"
                 " same key); the flows kept arriving (≥ 90 % of the planned rate)",
                 bool(during) and acceptable(during) and arrived >= 0.9 * planned,
                 f"{arrived} flows arrived (planned {planned:.0f}); {describe(during)};"
                 f" by time since the stop: {timeline(during, stopped_at)}")
    report.info("runtime throttles during the outage",
                f"{throttled} of {len(during)} answers were 429 {THROTTLE_MESSAGE!r} (no environment free"
                " while requests waited on the dead broker before the breaker opened); each retried")

    wait = config.drill_breaker_wait_seconds or drill.parameter(WAIT_PARAMETER)
    bound = wait + drill.parameter(HALF_OPEN_PARAMETER) + config.drill_recovery_slack_seconds
    drained_at: float | None = None
    closed_at: float | None = None
    next_progress = restarted_at + PROGRESS_SECONDS
    while time.monotonic() < restarted_at + bound and (drained_at is None or closed_at is None):
        now = time.monotonic()
        left, _ = outbox_backlog(drill, merchants, backlog_mark)
        state = breaker_state(drill)
        if drained_at is None and left == 0:
            drained_at = now - restarted_at
        if closed_at is None and state == CLOSED:
            closed_at = now - restarted_at
        if now >= next_progress:
            next_progress += PROGRESS_SECONDS
            report.progress(f"recovering {now - restarted_at:.0f}/{bound:g} s: breaker {state},"
                            f" {left}/{waiting} of the outage's outbox rows still waiting")
        time.sleep(0.5)
    report.check("breaker CLOSED again under load",
                 f"within wait {wait:g} s + half-open wait + slack = {bound:g} s of the restart",
                 closed_at is not None, f"CLOSED {_after(closed_at)} after the restart")
    report.check("outage backlog published",
                 f"the {waiting} outbox rows waiting at the restart are published within {bound:g} s",
                 drained_at is not None, f"published {_after(drained_at)} after the restart")

    time.sleep(steady)
    finished = load.stop()
    drill.cleanups.pop()
    load_seconds = time.monotonic() - load_started
    everything = flows.answers()
    report.check("every flow completed", "arrived = completed; none dropped, none failed; every answer 2xx"
                 " (or a throttle, retried)",
                 finished and not flows.failures and not flows.dropped
                 and flows.completed == len(flows.arrivals)
                 and acceptable(everything),
                 f"{len(flows.arrivals)} flows arrived in {load_seconds:.0f} s, {flows.completed} completed,"
                 f" {flows.dropped} dropped, {len(flows.failures)} failed {flows.failures[:3]};"
                 f" {load.resolved_by_lookup} resolved by a lookup;"
                 f" after the restart {describe(flows.answers(restarted_at))}")
    report.info("whole load", describe(everything))

    settle_started = time.monotonic()
    finish(drill)
    report.info("time to settle after the load stopped", f"{time.monotonic() - settle_started:.1f} s"
                " (outbox drained, consumers caught up, Kafka read back, reconciliation asked)")
    counts, want = exact_counts(drill, merchants), expected_counts(drill)
    off = {name: (counts[name], want[name]) for name in want if counts[name] != want[name]}
    entries = counts["CAPTURE entries"] + counts["REFUND entries"]
    applied = f"{counts[f'{BALANCE_CONSUMER} applied']} + {counts[f'{LEDGER_CONSUMER} applied']}"
    totals = "/".join(str(counts[name]) for name in ("authorized_total", "captured_total", "refunded_total"))
    report.check("counts match exactly", "payments, ledger entries, outbox rows (one eventId each, all"
                 " published), consumer applications and projection totals = what the 2xx answers imply",
                 not off, f"off (database, expected): {off}" if off else
                 f"{counts['payments']} payments, {entries} ledger entries, {counts['outbox rows']} events,"
                 f" {applied} consumer applications, totals authorized/captured/refunded {totals}")

    groups = consumer_groups(drill)
    if not groups:
        raise DrillFailed("the template has no enabled Kafka event source")
    lag, took = poll(lambda: consumer_lag(target.settings.kafka_bootstrap, groups),
                     lambda found: not any(found.values()), config.drill_drain_timeout_seconds, interval=1.0)
    report.check("consumer lag 0", "every consumer group committed up to the end of its topics",
                 not any(lag.values()), f"lag {lag} after {took:.1f} s")
    report.info("numbers", f"{flows.completed} flows under load ({len(everything)} requests;"
                f" {counts['payments']} payments with the warm-up), {counts['outbox rows']} events,"
                f" broker down {restarted_at - stopped_at:.1f} s, {waiting} outbox rows waited for it and"
                f" were published {_after(drained_at)} after the restart")
