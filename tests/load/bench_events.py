"""Event flow benchmark: outbox commit → Kafka → poller → consumer function → MariaDB effect.

Runs the real pieces against the live stack (started if needed): a CONSUMER-WORKER
function host running the balance projection (``functions/consumer/balance.py``)
on a topic of its own, the event-source poller, a private registry. Measures:

- **steady**: events committed to the outbox at a fixed rate (default 500/s, several
  writer threads), each published right after its commit through the
  ``kafka-publisher`` breaker exactly as ingest does (a publish that fails is left
  to the relay, which runs every second as the scheduler runs it). Latency = the consumer's
  ``processed_event.processed_at`` − the outbox row's ``created_at`` (both from the
  database clock, so no clock skew), p50/p95/p99/max over every event.
- **backlog**: N rows left unpublished in the outbox (as after a Kafka outage), then
  drained by two in-process relays racing with SKIP LOCKED while the poller
  consumes: relay publish rate and end-to-end drain rate (last effect committed).
- **consumer drain**: N records already in Kafka when the poller starts: the
  consumer path alone (batches of the template's BatchSize, 500); the rate over
  the whole phase (poller start and group join included) and from the first
  effect on (the drain itself).

Before the steady phase a few events go through the whole path once (poller
group join, the function's first environment and its first-call imports): the
steady latencies are those of a warm path, not of a cold start measured by the
first seconds of events.

``python -m tests.load.bench_events`` prints the table; ``run()`` returns the dict.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any

from payfn_shared.payments.events import EVENT_AUTHORIZED
from payfn_shared.payments.outbox import OutboxRecord
from payfn_shared.payments.publisher import KafkaPublisher
from payfn_shared.payments.relay import OutboxRelay, RelayConfig, RelayPublisher
from payfn_shared.platform.config import PREFIX, Settings
from payfn_shared.platform.db import Database

from infra.sam.template import REPO_ROOT
from infra.stack.supervisor import Supervisor
from tests.integration.eventflow_support import Flow, new_flow, poller_argv, produce, running, running_host
from tests.integration.registry_support import running_registry

CONSUMER_CODE = REPO_ROOT / "functions" / "consumer"
INSERT = ("INSERT INTO outbox_event (event_id, aggregate_id, event_type, topic, partition_key, payload,"
          " created_at) VALUES (%s, %s, %s, %s, %s, %s, UTC_TIMESTAMP(3))")
INSERT_PUBLISHED = ("INSERT INTO outbox_event (event_id, aggregate_id, event_type, topic, partition_key,"
                    " payload, created_at, published_at, attempts)"
                    " VALUES (%s, %s, %s, %s, %s, %s, UTC_TIMESTAMP(3), UTC_TIMESTAMP(3), 1)")


def _start_stack() -> Settings:
    supervisor = Supervisor()
    supervisor.up()
    for f in fields(supervisor.settings):
        os.environ[PREFIX + f.name.upper()] = str(getattr(supervisor.settings, f.name))
    return supervisor.settings


def _event(merchant: str) -> tuple[str, str, bytes]:
    event_id, payment_id = str(uuid.uuid4()), str(uuid.uuid4())
    payload = {"eventId": event_id, "eventType": EVENT_AUTHORIZED, "paymentId": payment_id,
               "merchantId": merchant, "status": "REQUESTED", "amount": 1, "currency": "USD",
               "occurredAt": "2026-01-01T00:00:00.000Z"}
    return event_id, payment_id, json.dumps(payload, separators=(",", ":")).encode()


def _processed(database: Database, merchant: str) -> int:
    """Events of this run with their effect: every event is 1 USD for the run's own merchant,
    and the projection counts each event once, so its total is the count. (A join of the
    outbox on the topic read every outbox row at each poll, and on a database with history
    took so long that a whole drain could finish between two polls.)"""
    rows = database.query("SELECT authorized_total AS n FROM merchant_balance WHERE merchant_id = %s"
                          " AND currency = 'USD'", (merchant,))
    return int(rows[0]["n"]) if rows else 0


def _wait_processed(database: Database, topic: str, merchant: str, expected: int, timeout: float) -> float:
    """Seconds until ``expected`` events of ``topic`` have their effect (raises on timeout)."""
    started = time.monotonic()
    while _processed(database, merchant) < expected:
        if time.monotonic() - started > timeout:
            unpublished = database.query("SELECT COUNT(*) AS n, MAX(last_error) AS error FROM outbox_event"
                                         " WHERE topic = %s AND published_at IS NULL", (topic,))[0]
            raise TimeoutError(f"only {_processed(database, merchant)}/{expected} events processed;"
                               f" {unpublished['n']} still unpublished (last error {unpublished['error']})")
        time.sleep(0.05)
    return time.monotonic() - started


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def warm_up(settings: Settings, flow: Flow, merchant: str, events: int = 20, timeout: float = 120) -> None:
    """Send ``events`` straight to Kafka and wait for their effect: group joined, function warm.

    They are for a merchant of their own, so no phase counts them.
    """
    values = [_event(merchant) for _ in range(events)]
    produce(settings, flow.topic, [value for _, _, value in values], key=b"warm-up")
    database = Database(settings)
    try:
        ids = ",".join(event_id for event_id, _, _ in values)
        query = ("SELECT COUNT(*) AS n FROM processed_event WHERE consumer = 'balance-projection'"
                 " AND FIND_IN_SET(event_id, %s)")
        deadline = time.monotonic() + timeout
        while int(database.query(query, (ids,))[0]["n"]) < events:
            if time.monotonic() > deadline:
                raise TimeoutError("the warm-up events were not processed")
            time.sleep(0.05)
    finally:
        database.close()


def relay_every_second(settings: Settings, stop: threading.Event) -> None:
    """What the scheduler does in the stack: the relay every second (default grace period)."""
    publisher = RelayPublisher(settings.kafka_bootstrap)
    database = Database(settings)
    relay = OutboxRelay(database, publisher, RelayConfig())
    try:
        while not stop.wait(1.0):
            relay.run()
    finally:
        publisher.close()
        database.close()


def steady(settings: Settings, flow: Flow, merchant: str, rate: float, seconds: float,
           writers: int) -> dict[str, Any]:
    """Commit + publish at ``rate`` events/s for ``seconds``; latency of each event's effect."""
    total = int(rate * seconds)
    interval = writers / rate
    start_at = time.monotonic() + 0.5

    def writer(index: int) -> None:
        database, publisher = Database(settings), KafkaPublisher(settings.kafka_bootstrap)
        try:
            for n in range(index, total, writers):
                delay = start_at + (n // writers) * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                event_id, payment_id, value = _event(merchant)

                def insert(cursor: Any, event_id: str = event_id, payment_id: str = payment_id,
                           value: bytes = value) -> OutboxRecord:
                    cursor.execute(INSERT, (event_id, payment_id, EVENT_AUTHORIZED, flow.topic, payment_id,
                                            value))
                    return OutboxRecord(int(cursor.lastrowid), event_id, EVENT_AUTHORIZED, flow.topic,
                                        payment_id, value)

                record = database.run_in_transaction(insert)
                publisher.publish_and_record([record], database)
        finally:
            publisher.close()
            database.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    stop_relay = threading.Event()
    relay = threading.Thread(target=relay_every_second, args=(settings, stop_relay))
    relay.start()
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    produced_in = time.monotonic() - began - 0.5
    database = Database(settings)
    try:
        _wait_processed(database, flow.topic, merchant, total, timeout=120)
    finally:
        stop_relay.set()
        relay.join()
    relayed = int(database.query("SELECT COUNT(*) AS n FROM outbox_event WHERE topic = %s AND attempts > 1",
                                 (flow.topic,))[0]["n"])
    latencies = [int(r["us"]) / 1000.0 for r in database.query(
        "SELECT TIMESTAMPDIFF(MICROSECOND, o.created_at, p.processed_at) AS us FROM outbox_event o"
        " JOIN processed_event p ON p.consumer = 'balance-projection' AND p.event_id = o.event_id"
        " WHERE o.topic = %s", (flow.topic,))]
    database.close()
    return {
        "events": total,
        "target_rate_per_s": rate,
        "achieved_rate_per_s": round(total / produced_in, 1),
        "latency_p50_ms": round(_percentile(latencies, 0.50), 1),
        "latency_p95_ms": round(_percentile(latencies, 0.95), 1),
        "latency_p99_ms": round(_percentile(latencies, 0.99), 1),
        "latency_max_ms": round(max(latencies), 1),
        "published_by_relay_after_a_failed_publish": relayed,
    }


def backlog(settings: Settings, flow: Flow, merchant: str, events: int, already: int) -> dict[str, Any]:
    """``events`` unpublished outbox rows drained by two racing relays while the poller consumes."""
    database = Database(settings)
    for start in range(0, events, 1000):
        rows = []
        for _ in range(min(1000, events - start)):
            event_id, payment_id, value = _event(merchant)
            rows.append((event_id, payment_id, EVENT_AUTHORIZED, flow.topic, payment_id, value))
        database.run_in_transaction(lambda cursor, rows=rows: cursor.executemany(INSERT, rows))
    config = RelayConfig(relay_batch_size=500, relay_min_age_ms=0, relay_max_run_seconds=600)
    published: list[int] = []

    def relay() -> None:
        publisher = RelayPublisher(settings.kafka_bootstrap)
        try:
            published.append(OutboxRelay(Database(settings), publisher, config).run().published)
        finally:
            publisher.close()

    began = time.monotonic()
    relays = [threading.Thread(target=relay) for _ in range(2)]
    for thread in relays:
        thread.start()
    for thread in relays:
        thread.join()
    relay_seconds = time.monotonic() - began
    _wait_processed(database, flow.topic, merchant, already + events, timeout=600)
    drain_seconds = time.monotonic() - began
    database.close()
    return {
        "events": events,
        "relay_published": sum(published),
        "relay_publish_rate_per_s": round(events / relay_seconds, 1),
        "end_to_end_drain_rate_per_s": round(events / drain_seconds, 1),
        "drain_seconds": round(drain_seconds, 2),
    }


def consumer_drain(settings: Settings, flow: Flow, merchant: str, registry_url: str, workdir: Path,
                   events: int, already: int) -> dict[str, Any]:
    """``events`` records already in Kafka when the poller starts: the consumer path alone.

    Their outbox rows are written as already published, only so the effect can be
    matched by topic like the other phases.
    """
    values = [_event(merchant) for _ in range(events)]
    database = Database(settings)
    for start in range(0, events, 1000):
        chunk = [(e, p, EVENT_AUTHORIZED, flow.topic, p, v) for e, p, v in values[start:start + 1000]]
        database.run_in_transaction(lambda cursor, chunk=chunk: cursor.executemany(INSERT_PUBLISHED, chunk))
    produce(settings, flow.topic, [v for _, _, v in values], key=b"bench")
    began = time.monotonic()
    with running("poller-drain", poller_argv(flow, registry_url), workdir, flow.env):
        _wait_processed(database, flow.topic, merchant, already + 1, timeout=600)
        first_effect = time.monotonic()
        first_done = _processed(database, merchant) - already
        _wait_processed(database, flow.topic, merchant, already + events, timeout=600)
        finished = time.monotonic()
    database.close()
    seconds = finished - began
    after_first = (events - first_done) / (finished - first_effect)
    return {"events": events, "drain_rate_per_s": round(events / seconds, 1),
            "drain_seconds": round(seconds, 2), "note": "includes the poller's start and group join",
            "drain_rate_after_first_effect_per_s": round(after_first, 1),
            "seconds_to_first_effect": round(first_effect - began, 2)}


def run(rate: float = 500.0, seconds: float = 10.0, writers: int = 16,
        backlog_events: int = 20000) -> dict[str, Any]:
    settings = _start_stack()
    workdir = Path(tempfile.mkdtemp(prefix="bench-events-"))
    merchant = f"bench-events-{uuid.uuid4().hex[:8]}"
    flow = new_flow(workdir, settings, "balance.handler", code=CONSUMER_CODE, batch_size=500)
    database = Database(settings)
    results: dict[str, Any] = {}
    try:
        with running_registry(settings.aws_endpoint_url) as registry, running_host(flow, registry.url):
            with running("poller", poller_argv(flow, registry.url), workdir, flow.env):
                warm_up(settings, flow, f"{merchant}-warm")
                results["steady"] = steady(settings, flow, merchant, rate, seconds, writers)
                results["backlog"] = backlog(settings, flow, merchant, backlog_events,
                                             already=results["steady"]["events"])
            done = _processed(database, merchant)
            results["consumer_drain"] = consumer_drain(settings, flow, merchant, registry.url, workdir,
                                                       backlog_events, already=done)
    finally:
        database.query("DELETE FROM merchant_balance WHERE merchant_id IN (%s, %s)",
                       (merchant, f"{merchant}-warm"))
        database.query("DELETE FROM outbox_event WHERE topic = %s", (flow.topic,))
        database.close()
    return results


def main() -> None:
    from tests.load.bench import render

    print(render({"events": run()}))


if __name__ == "__main__":
    sys.exit(main())
