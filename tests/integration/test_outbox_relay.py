"""The outbox relay against the live MariaDB and broker: once per row, even with relays racing."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pymysql
import pytest
from payfn_shared.payments.events import EVENT_AUTHORIZED
from payfn_shared.payments.publisher import PublisherConfig
from payfn_shared.payments.relay import OutboxRelay, RelayConfig, RelayPublisher, RelayReport
from payfn_shared.platform.breaker import get_breaker
from payfn_shared.platform.config import Settings
from payfn_shared.platform.db import Database

from infra.stack.kafka_admin import ensure_topics
from tests.integration.eventflow_support import read_all

CONFIG = RelayConfig(relay_batch_size=25, relay_min_age_ms=0)
PATIENT = PublisherConfig(kafka_publish_timeout_ms=10000)


def db_for_thread(settings: Settings) -> pymysql.connections.Connection:
    """A connection of the calling thread (pymysql connections are not shared between threads)."""
    return pymysql.connect(host=settings.db_host, port=settings.db_port, user=settings.db_user,
                           password=settings.db_password, database=settings.db_name, autocommit=True)


@pytest.fixture
def outbox_ids(db: pymysql.connections.Connection) -> Iterator[list[int]]:
    """Rows a test inserts; deleted afterwards so no other relay keeps retrying them."""
    ids: list[int] = []
    yield ids
    if ids:
        with db.cursor() as cursor:
            cursor.execute("DELETE FROM outbox_event WHERE FIND_IN_SET(id, %s)", (joined(ids),))


def joined(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)


def insert_rows(db: pymysql.connections.Connection, topic: str, keys: list[str], ids: list[int],
                age_seconds: int = 10) -> list[str]:
    """Unpublished outbox rows (one per key, in order); returns their event ids.

    Rows younger than the stack's own relay's minimum age (3 s) are left to the
    test's relay (``CONFIG`` has no minimum age); older ones may be taken by either.
    """
    event_ids = []
    with db.cursor() as cursor:
        for key in keys:
            event_id = str(uuid.uuid4())
            payload = {"eventId": event_id, "eventType": EVENT_AUTHORIZED, "paymentId": key}
            cursor.execute(
                "INSERT INTO outbox_event (event_id, aggregate_id, event_type, topic, partition_key, payload,"
                " created_at) VALUES (%s, %s, %s, %s, %s, %s, UTC_TIMESTAMP(3) - INTERVAL %s SECOND)",
                (event_id, key, EVENT_AUTHORIZED, topic, key, json.dumps(payload), age_seconds))
            ids.append(int(cursor.lastrowid))
            event_ids.append(event_id)
    return event_ids


def rows(db: pymysql.connections.Connection, ids: list[int]) -> dict[int, tuple[bool, int, str | None]]:
    with db.cursor() as cursor:
        cursor.execute("SELECT id, published_at IS NOT NULL, attempts, last_error FROM outbox_event"
                       " WHERE FIND_IN_SET(id, %s)", (joined(ids),))
        return {int(r[0]): (bool(r[1]), int(r[2]), r[3]) for r in cursor.fetchall()}


def test_two_relays_at_once_publish_every_row_exactly_once(
    settings: Settings, db: pymysql.connections.Connection, outbox_ids: list[int],
) -> None:
    topic = f"test.relay.{uuid.uuid4().hex[:10]}"
    ensure_topics(settings.kafka_bootstrap, 3, (topic,))
    event_ids = insert_rows(db, topic, [str(uuid.uuid4()) for _ in range(150)], outbox_ids)
    reports: list[RelayReport] = []
    start = threading.Barrier(2)

    def relay() -> None:
        # A generous publish timeout: on a loaded machine a timed-out send may still
        # land, and its retry would be a (legitimate, consumer-deduplicated) second copy.
        publisher = RelayPublisher(settings.kafka_bootstrap, config=PATIENT)
        database, own = Database(settings), db_for_thread(settings)
        deadline = time.monotonic() + 60
        try:
            start.wait()
            while time.monotonic() < deadline and not all(
                    state[0] for state in rows(own, outbox_ids).values()):
                reports.append(OutboxRelay(database, publisher, CONFIG).run())
        finally:
            publisher.close()
            database.close()
            own.close()

    threads = [threading.Thread(target=relay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    published = read_all(settings, topic, expected=len(event_ids))
    seen = [dict(record.headers)["eventId"].decode() for record in published]
    assert sorted(seen) == sorted(event_ids)
    assert all(published and error is None for published, _, error in rows(db, outbox_ids).values())
    gauges = {"payfn_outbox_backlog", "payfn_outbox_oldest_age_seconds"}
    assert reports[-1].to_dict()["metrics"].keys() == gauges


def test_a_failed_row_keeps_its_error_and_holds_back_later_rows_of_its_key(
    settings: Settings, db: pymysql.connections.Connection, outbox_ids: list[int],
) -> None:
    topic = f"test.relay.{uuid.uuid4().hex[:10]}"
    ensure_topics(settings.kafka_bootstrap, 1, (topic,))
    key, other = str(uuid.uuid4()), str(uuid.uuid4())
    insert_rows(db, "illegal topic!", [key], outbox_ids)
    insert_rows(db, topic, [key, other], outbox_ids)
    # A breaker of its own: this deliberate failure must not count against the shared one.
    breaker = get_breaker(f"relay-test-{uuid.uuid4().hex}")
    publisher = RelayPublisher(settings.kafka_bootstrap, breaker=breaker)
    try:
        report = OutboxRelay(Database(settings), publisher, replace(CONFIG, relay_batch_size=1000)).run()
    finally:
        publisher.close()
    state = rows(db, outbox_ids)
    failed, held, published = (state[outbox_id] for outbox_id in outbox_ids)
    assert failed[:2] == (False, 1) and failed[2] is not None and "illegal" in failed[2]
    assert held == (False, 0, None)
    assert published == (True, 1, None)
    assert report.failed >= 1 and report.deferred >= 1
    assert report.backlog.size >= 2 and report.backlog.oldest_age_seconds >= 10


def test_rows_of_one_key_are_published_in_id_order(
    settings: Settings, db: pymysql.connections.Connection, outbox_ids: list[int],
) -> None:
    topic = f"test.relay.{uuid.uuid4().hex[:10]}"
    ensure_topics(settings.kafka_bootstrap, 1, (topic,))
    key = str(uuid.uuid4())
    # Young rows: the stack's scheduled relay, if it runs, must not take one of them
    # (SKIP LOCKED would hide it from this relay and the deferrals asserted below).
    event_ids = insert_rows(db, topic, [key, key, key], outbox_ids, age_seconds=0)
    publisher = RelayPublisher(settings.kafka_bootstrap, config=PATIENT)
    try:
        report = OutboxRelay(Database(settings), publisher, CONFIG).run()
    finally:
        publisher.close()
    published = sorted(read_all(settings, topic, expected=3), key=lambda record: record.offset)
    assert [dict(record.headers)["eventId"].decode() for record in published] == event_ids
    assert report.deferred >= 2
