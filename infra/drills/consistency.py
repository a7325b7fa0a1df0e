"""The end-of-drill (and end-of-benchmark) check that nothing was lost or duplicated.

Five sources must agree about the merchants a run used: what clients were told (every
2xx: :class:`~infra.drills.client.ClientLedger`), the database, the transactional
outbox, Kafka itself (drills only) and the consumers (``processed_event`` rows and the
``merchant_balance`` projection); and, when the monitoring API is deployed, its
reconciliation must say "balanced". Publishing and consuming are asynchronous, so the
check first waits (bounded) for the outbox to drain and the consumers to catch up;
only then does it assert.

What each source must show: docs/DRILLS.md#infradrillsconsistency
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pymysql
import pymysql.cursors
from payfn_shared.payments.consumers import BALANCE_CONSUMER, LEDGER_CONSUMER
from payfn_shared.payments.events import EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_REFUNDED, TOPIC_BY_EVENT_TYPE
from payfn_shared.platform.config import Settings
from payfn_shared.platform.db import in_list

from infra.drills.client import ClientLedger, GatewayClient
from infra.drills.report import Report

#: The events (in order) and ledger transitions each payment status implies.
EVENTS_BY_STATUS = {
    "REQUESTED": (EVENT_AUTHORIZED,),
    "COMPLETED": (EVENT_AUTHORIZED, EVENT_CAPTURED),
    "REFUNDED": (EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_REFUNDED),
}
TRANSITIONS_BY_STATUS = {"REQUESTED": (), "COMPLETED": ("CAPTURE",), "REFUNDED": ("CAPTURE", "REFUND")}
LEDGER_CONSUMED = (EVENT_CAPTURED, EVENT_REFUNDED)


def connect(settings: Settings) -> pymysql.connections.Connection:
    return pymysql.connect(host=settings.db_host, port=settings.db_port, user=settings.db_user,
                           password=settings.db_password, database=settings.db_name, autocommit=True,
                           connect_timeout=5, read_timeout=120, cursorclass=pymysql.cursors.DictCursor)


@dataclass
class FlowState:
    """Aggregates of the event flow for the run's merchants (one snapshot)."""

    statuses: Counter[str]
    outbox_rows: Counter[tuple[str, str]]
    outbox_payments: Counter[tuple[str, str]]
    unpublished: int
    processed: Counter[tuple[str, str]]
    projections_off: list[dict[str, Any]]

    def expected_events(self) -> Counter[str]:
        wanted: Counter[str] = Counter()
        for status, count in self.statuses.items():
            for event_type in EVENTS_BY_STATUS.get(status, ()):
                wanted[event_type] += count
        return wanted

    def events(self) -> Counter[str]:
        counted: Counter[str] = Counter()
        for (_, event_type), count in self.outbox_rows.items():
            counted[event_type] += count
        return counted

    def missing_processed(self) -> dict[str, int]:
        """Events of each (consumer, type) not yet applied (negative: applied more than once)."""
        events = self.events()
        missing = {}
        for event_type, count in events.items():
            consumers = [BALANCE_CONSUMER] + ([LEDGER_CONSUMER] if event_type in LEDGER_CONSUMED else [])
            for consumer in consumers:
                gap = count - self.processed[(consumer, event_type)]
                if gap:
                    missing[f"{consumer}/{event_type}"] = gap
        return missing

    @property
    def settled(self) -> bool:
        return self.unpublished == 0 and not self.missing_processed() and not self.projections_off


def expand_in(query: str, marks: str) -> str:
    """``query`` with its ``IN ($)`` list expanded to ``marks`` placeholders."""
    return query.replace("$", marks)


def select_in(settings: Settings, query: str, values: Sequence[str],
              leading: tuple[object, ...] = ()) -> list[dict[str, Any]]:
    """One read on a connection of its own: ``query``'s ``IN ($)`` list holds ``values``,
    after the ``leading`` parameters of any placeholders before it."""
    connection = connect(settings)
    try:
        marks, params = in_list(values)
        with connection.cursor() as cursor:
            cursor.execute(expand_in(query, marks), (*leading, *params))
            return list(cursor.fetchall())
    finally:
        connection.close()


def flow_state(connection: pymysql.connections.Connection, merchants: Sequence[str]) -> FlowState:
    marks, params = in_list(merchants)
    with connection.cursor() as cursor:
        cursor.execute(expand_in("SELECT status, COUNT(*) AS n FROM payment WHERE merchant_id IN ($)"
                            " GROUP BY status", marks), params)
        statuses = Counter({r["status"]: int(r["n"]) for r in cursor.fetchall()})
        cursor.execute(expand_in(
            "SELECT p.status, o.event_type, COUNT(*) AS n, COUNT(DISTINCT o.aggregate_id) AS payments,"
            " SUM(o.published_at IS NULL) AS unpublished FROM payment p"
            " JOIN outbox_event o ON o.aggregate_id = p.id WHERE p.merchant_id IN ($)"
            " GROUP BY p.status, o.event_type", marks), params)
        rows = cursor.fetchall()
        cursor.execute(expand_in(
            "SELECT pe.consumer, o.event_type, COUNT(*) AS n FROM payment p"
            " JOIN outbox_event o ON o.aggregate_id = p.id"
            " JOIN processed_event pe ON pe.event_id = o.event_id"
            " WHERE p.merchant_id IN ($) GROUP BY pe.consumer, o.event_type", marks), params)
        processed = Counter({(r["consumer"], r["event_type"]): int(r["n"]) for r in cursor.fetchall()})
        cursor.execute(expand_in(
            "SELECT merchant_id, currency, SUM(amount) AS authorized_total,"
            " SUM(IF(status IN ('COMPLETED', 'REFUNDED'), amount, 0)) AS captured_total,"
            " SUM(IF(status = 'REFUNDED', amount, 0)) AS refunded_total"
            " FROM payment WHERE merchant_id IN ($) GROUP BY merchant_id, currency", marks), params)
        expected = {(r["merchant_id"], r["currency"]): r for r in cursor.fetchall()}
        cursor.execute(expand_in(
            "SELECT merchant_id, currency, authorized_total, captured_total, refunded_total"
            " FROM merchant_balance WHERE merchant_id IN ($)", marks), params)
        actual = {(r["merchant_id"], r["currency"]): r for r in cursor.fetchall()}
    off = []
    fields = ("authorized_total", "captured_total", "refunded_total")
    for key in sorted(set(expected) | set(actual)):
        want = {f: int(expected[key][f]) if key in expected else 0 for f in fields}
        have = {f: int(actual[key][f]) if key in actual else 0 for f in fields}
        if want != have:
            off.append({"merchant": key[0], "currency": key[1], "expected": want, "projection": have})
    return FlowState(
        statuses=statuses,
        outbox_rows=Counter({(r["status"], r["event_type"]): int(r["n"]) for r in rows}),
        outbox_payments=Counter({(r["status"], r["event_type"]): int(r["payments"]) for r in rows}),
        unpublished=sum(int(r["unpublished"] or 0) for r in rows),
        processed=processed,
        projections_off=off,
    )


def wait_settled(settings: Settings, merchants: Sequence[str], timeout: float,
                 progress: Callable[[FlowState, float], None] | None = None,
                 progress_every: float = 5.0) -> tuple[FlowState, float]:
    """Poll until the outbox is drained and every consumer caught up (or ``timeout``).

    ``progress`` is called with the latest state every ``progress_every`` seconds of
    waiting, so a long drain shows how far it got rather than a silent minute.
    """
    started = time.monotonic()
    reported = started
    connection = connect(settings)
    try:
        while True:
            state = flow_state(connection, merchants)
            elapsed = time.monotonic() - started
            if state.settled or elapsed >= timeout:
                return state, elapsed
            if progress is not None and time.monotonic() - reported >= progress_every:
                reported = time.monotonic()
                progress(state, elapsed)
            time.sleep(0.5)
    finally:
        connection.close()


def describe_progress(state: FlowState) -> str:
    """One line on how far the event flow got: what is left to publish and to apply."""
    missing = state.missing_processed()
    left = sum(n for n in missing.values() if n > 0)
    return (f"{sum(state.events().values())} events: {state.unpublished} unpublished, {left} consumer"
            f" applications missing, {len(state.projections_off)} projection(s) behind")


def kafka_event_counts(bootstrap: str, event_ids: Iterable[str], timeout: float = 30.0) -> Counter[str]:
    """How often each wanted eventId is in the payment topics (a full read, no consumer group)."""
    from infra.stack.kafka_admin import TopicRecord, partitions_of, read_back_consumer, read_to_end

    wanted = set(event_ids)
    counts: Counter[str] = Counter()

    def count(record: TopicRecord) -> None:
        event_id = (dict(record.headers).get("eventId") or b"").decode()
        if event_id in wanted:
            counts[event_id] += 1

    consumer = read_back_consumer(bootstrap)
    try:
        read_to_end(consumer, partitions_of(consumer, TOPIC_BY_EVENT_TYPE.values()), timeout, count)
    finally:
        consumer.close()
    return counts


def consumer_lag(bootstrap: str, groups: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Records not yet committed per consumer group: end offset - committed offset, summed over
    the partitions of the group's topics (a partition never committed counts from 0).

    Read over the Kafka protocol, not from the poller's metrics: the check must hold for
    whatever consumes (our poller, Lambda's own event-source mapping on AWS).
    """
    from infra.stack.kafka_admin import committed_offsets, end_offsets, partitions_of, read_back_consumer

    consumer = read_back_consumer(bootstrap)
    try:
        lag = {}
        for group, topics in groups.items():
            committed = committed_offsets(bootstrap, group, topics)
            ends = end_offsets(consumer, partitions_of(consumer, topics))
            lag[group] = sum(end - (committed.get(key) or 0) for key, end in ends.items())
        return lag
    finally:
        consumer.close()


def describe_outbox_rows(settings: Settings, event_ids: Sequence[str]) -> str:
    """What the database knows of some events (when written, when marked published, how often
    tried, whether a consumer applied them): enough to tell, from a failed run's report alone,
    a publish that was never acknowledged from one the broker acknowledged and then lost."""
    rows = select_in(
        settings,
        "SELECT o.id, o.event_id, o.topic, o.created_at, o.published_at, o.attempts, o.last_error,"
        " (SELECT COUNT(*) FROM processed_event pe WHERE pe.event_id = o.event_id) AS applied"
        " FROM outbox_event o WHERE o.event_id IN ($)", event_ids)
    return "; ".join(f"outbox {r['id']} {r['event_id']} {r['topic']} created {r['created_at']}"
                     f" published {r['published_at']} attempts {r['attempts']} last error {r['last_error']!r}"
                     f" applied by {r['applied']} consumer(s)" for r in rows)


def check_consistency(report: Report, settings: Settings, client: GatewayClient, drain_timeout: float,
                      *, read_kafka: bool = True, strict_extra: bool = True) -> None:
    """Assert that the database, the outbox, Kafka, the consumers and the clients agree.

    ``strict_extra``: a payment row no client was told about is a failure unless its
    request's outcome was ambiguous (a 5xx or timeout never retried to a 2xx).
    """
    ledger: ClientLedger = client.ledger
    merchants = sorted(ledger.merchants())
    report.check("run used merchants", "at least one merchant with a 2xx payment", bool(merchants),
                 f"{len(merchants)} merchant(s), {len(ledger.payments)} payment(s) acknowledged")

    def progress(now: FlowState, elapsed: float) -> None:
        report.progress(f"draining {elapsed:.0f}/{drain_timeout:.0f} s: {describe_progress(now)}")

    state, waited = wait_settled(settings, merchants, drain_timeout, progress)
    report.check("outbox drained", f"every outbox row published within {drain_timeout:.0f} s",
                 state.unpublished == 0, f"{state.unpublished} unpublished after {waited:.1f} s")
    connection = connect(settings)
    try:
        marks, params = in_list(merchants)
        with connection.cursor() as cursor:
            cursor.execute(expand_in(
                "SELECT p.id, p.merchant_id, p.idempotency_key, p.status, p.amount, p.currency,"
                " SUM(l.transition = 'CAPTURE') AS captures, SUM(l.transition = 'REFUND') AS refunds,"
                " COUNT(l.id) AS entries FROM payment p LEFT JOIN ledger_entry l ON l.payment_id = p.id"
                " WHERE p.merchant_id IN ($) GROUP BY p.id", marks), params)
            rows = {r["id"]: r for r in cursor.fetchall()}
            cursor.execute(expand_in(
                "SELECT o.event_id, o.event_type FROM outbox_event o JOIN payment p ON p.id = o.aggregate_id"
                " WHERE p.merchant_id IN ($)", marks), params)
            events = cursor.fetchall()
    finally:
        connection.close()
    told = set(ledger.payments)
    lost = sorted(told - set(rows))
    extra = set(rows) - told
    explained = {pid for pid in extra
                 if (rows[pid]["merchant_id"], rows[pid]["idempotency_key"]) in ledger.ambiguous}
    unexplained = sorted(extra - explained) if strict_extra else []
    report.check("database = 2xx answers",
                 "every acknowledged payment has its row; no row nobody was told of",
                 not lost and not unexplained,
                 f"{len(rows)} rows, {len(told)} acknowledged; lost {len(lost)} {lost[:3]},"
                 f" unexplained extra {len(unexplained)} {unexplained[:3]},"
                 f" from ambiguous requests {len(explained)}")
    wrong_status = sorted(pid for pid in told & set(rows) - ledger.ambiguous_transitions
                          if rows[pid]["status"] != ledger.payments[pid].status)
    wrong_amount = sorted(pid for pid in told & set(rows)
                          if (int(rows[pid]["amount"]), rows[pid]["currency"])
                          != (ledger.payments[pid].amount, ledger.payments[pid].currency))
    report.check("status and amount = last 2xx answer",
                 "each row's status and amount are what the client last saw",
                 not wrong_status and not wrong_amount,
                 f"{len(wrong_status)} status mismatch(es) {wrong_status[:3]}, {len(wrong_amount)} amount;"
                 f" {len(ledger.ambiguous_transitions)} capture/refund(s) without a definite answer")
    bad_ledger = sorted(pid for pid, r in rows.items()
                        if (int(r["captures"] or 0), int(r["refunds"] or 0), int(r["entries"]))
                        != (int("CAPTURE" in TRANSITIONS_BY_STATUS[r["status"]]),
                            int("REFUND" in TRANSITIONS_BY_STATUS[r["status"]]),
                            len(TRANSITIONS_BY_STATUS[r["status"]])))
    report.check("ledger entries per transition", "REQUESTED 0, COMPLETED CAPTURE, REFUNDED CAPTURE+REFUND",
                 not bad_ledger,
                 f"{len(bad_ledger)} payment(s) off {bad_ledger[:3]}; statuses {dict(state.statuses)}")
    wanted = state.expected_events()
    counted = state.events()
    duplicated = {key: n - state.outbox_payments[key] for key, n in state.outbox_rows.items()
                  if n != state.outbox_payments[key]}
    unexpected = {key: n for key, n in state.outbox_rows.items() if key[1] not in EVENTS_BY_STATUS[key[0]]}
    report.check("one outbox event per transition", "events = transitions; none twice; none unexpected",
                 counted == wanted and not duplicated and not unexpected,
                 f"events {dict(counted)}, expected {dict(wanted)},"
                 f" duplicated {duplicated}, unexpected {unexpected}")
    if read_kafka:
        in_kafka = kafka_event_counts(settings.kafka_bootstrap, [e["event_id"] for e in events])
        missing = [e["event_id"] for e in events if not in_kafka[e["event_id"]]]
        again = sum(n - 1 for n in in_kafka.values() if n > 1)
        report.check("every event is in Kafka", "each outbox event found in its topic (full read)",
                     not missing, f"{len(events) - len(missing)}/{len(events)} found; {len(missing)} missing"
                     + (f": {describe_outbox_rows(settings, missing[:3])}" if missing else ""))
        report.info("events delivered to Kafka more than once",
                    f"{again} extra copies (at-least-once; the consumers dedupe by eventId)")
    missing_processed = state.missing_processed()
    report.check("consumers applied every event once", "processed_event rows = events, per consumer and type",
                 not missing_processed,
                 f"gaps {missing_processed or 'none'}; processed {dict(state.processed)}")
    report.check("balance projection = payments",
                 "merchant_balance totals = sums implied by payment statuses",
                 not state.projections_off,
                 f"{len(state.projections_off)} merchant(s) off {state.projections_off[:2]}")
    scoped = merchants if len(merchants) <= PER_MERCHANT_RECONCILIATION_LIMIT else []
    check_reconciliation(report, client, scoped, len(rows))


#: Up to this many merchants the reconciliation is asked per merchant, so that a stack
#: shared with other work (the e2e suite's) is judged only on this run's payments; a
#: larger run (the benchmark's private stack) asks once for the whole database.
PER_MERCHANT_RECONCILIATION_LIMIT = 32


def check_reconciliation(report: Report, client: GatewayClient, merchants: Sequence[str],
                         payments: int) -> None:
    """The monitoring API's own verdict, per merchant (all merchants at once for large runs)."""
    scopes = [f"?merchantId={m}" for m in merchants] or [""]
    verdicts = []
    for scope in scopes:
        answer = client.get_json(f"/api/monitoring/database/reconciliation{scope}")
        if answer.status != 200 or "balanced" not in answer.body:
            report.info("reconciliation (monitoring API)",
                        f"not available: HTTP {answer.status} {str(answer.body)[:120]}")
            return
        verdicts.append(answer.body)
    balanced = all(v["balanced"] for v in verdicts)
    checked = sum(int(v.get("checkedPayments", 0)) for v in verdicts)
    truncated = any(v.get("truncated") for v in verdicts)
    covered = checked == payments or truncated or not merchants
    report.check("reconciliation balanced", "GET /api/monitoring/database/reconciliation says balanced",
                 balanced and covered,
                 "; ".join(str(v.get("summary", v)) for v in verdicts)[:400])
