"""KafkaPublisher with a fake producer and breaker: what it sends, and that it never raises."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError
from payfn_shared.payments.outbox import OutboxRecord
from payfn_shared.payments.publisher import (
    BREAKER_OPEN_ERROR,
    KafkaPublisher,
    PublishedMarks,
    PublisherConfig,
)
from payfn_shared.platform.breaker import CallNotPermittedError
from payfn_shared.platform.config import ConfigError
from payfn_shared.platform.errors import DependencyUnavailable

RECORD = OutboxRecord(7, "e-1", "PAYMENT_AUTHORIZED", "payment.authorized", "p-1", b'{"a":1}')


class FakeProducer:
    """confluent-kafka's Producer as the publisher uses it: produce, then poll serves reports."""

    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.error: KafkaError | None = None
        self.silent = False
        self.purged = False
        self.polls: list[float] = []
        self._reports: list[Callable[[KafkaError | None, Any], None]] = []
        FakeProducer.instances.append(self)

    def produce(self, topic: str, *, on_delivery: Callable[[KafkaError | None, Any], None],
                **kwargs: Any) -> None:
        self.sent.append((topic, kwargs))
        self._reports.append(on_delivery)

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        if self.silent:
            time.sleep(timeout)
            return 0
        reports, self._reports = self._reports, []
        for report in reports:
            report(self.error, None)
        return len(reports)

    def purge(self) -> None:
        self.purged = True

    def flush(self, timeout: float) -> int:
        return self.poll(timeout)


class PassThroughBreaker:
    def __init__(self, open_: bool = False) -> None:
        self.open = open_
        self.calls = 0

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.open:
            raise CallNotPermittedError("kafka-publisher", "OPEN")
        self.calls += 1
        return func(*args, **kwargs)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    FakeProducer.instances.clear()


def _publisher(breaker: PassThroughBreaker) -> KafkaPublisher:
    config = PublisherConfig(kafka_publish_timeout_ms=800)
    return KafkaPublisher("h1:9092,h2:9092", config, breaker, FakeProducer)


def test_sends_with_key_headers_and_bounded_producer() -> None:
    publisher = _publisher(PassThroughBreaker())
    outcomes = publisher.publish([RECORD])
    assert [o.published for o in outcomes] == [True]
    producer, = FakeProducer.instances
    headers = [("eventId", b"e-1"), ("eventType", b"PAYMENT_AUTHORIZED")]
    assert producer.sent == [("payment.authorized", {"key": b"p-1", "value": b'{"a":1}', "headers": headers})]
    config = producer.config
    assert config["bootstrap.servers"] == "h1:9092,h2:9092"
    assert config["acks"] == "all" and config["enable.idempotence"] is True
    assert config["message.timeout.ms"] == 800
    publisher.publish([RECORD])
    assert len(FakeProducer.instances) == 1, "the producer is reused warm"


def test_librdkafka_timeout_is_a_failed_outcome_and_keeps_the_producer() -> None:
    publisher = _publisher(PassThroughBreaker())
    publisher.publish([RECORD])
    FakeProducer.instances[0].error = KafkaError(KafkaError._MSG_TIMED_OUT)
    outcome, = publisher.publish([RECORD])
    assert not outcome.published and (outcome.error or "").startswith("KafkaTimeoutError")
    assert not FakeProducer.instances[0].purged


def test_no_report_in_time_is_a_timeout_bounded_by_the_config() -> None:
    publisher = KafkaPublisher("h:9092", PublisherConfig(kafka_publish_timeout_ms=50), PassThroughBreaker(),
                               FakeProducer)
    publisher.publish([RECORD])
    producer = FakeProducer.instances[0]
    producer.silent = True
    outcome, = publisher.publish([RECORD])
    assert (outcome.error or "").startswith("KafkaTimeoutError")
    assert sum(producer.polls[1:]) <= 0.05 + 0.1 + 0.06, "the wait stops at the timeout plus the grace"


def test_fatal_errors_drop_the_producer_others_keep_it() -> None:
    publisher = _publisher(PassThroughBreaker())
    publisher.publish([RECORD])
    FakeProducer.instances[0].error = KafkaError(KafkaError._TRANSPORT)
    assert not publisher.publish([RECORD])[0].published
    assert not FakeProducer.instances[0].purged, "librdkafka reconnects by itself"
    FakeProducer.instances[0].error = KafkaError(KafkaError.INVALID_PRODUCER_EPOCH, fatal=True)
    assert not publisher.publish([RECORD])[0].published
    assert FakeProducer.instances[0].purged
    publisher.publish([RECORD])
    assert len(FakeProducer.instances) == 2


def test_open_breaker_refuses_without_touching_kafka() -> None:
    outcome, = _publisher(PassThroughBreaker(open_=True)).publish([RECORD])
    assert outcome.error == BREAKER_OPEN_ERROR
    assert FakeProducer.instances == []


def test_outbox_rows_from_the_relay_select() -> None:
    row = {"id": 7, "event_id": "e-1", "event_type": "PAYMENT_AUTHORIZED", "topic": "payment.authorized",
           "partition_key": "p-1", "payload": '{"a":1}'}
    assert OutboxRecord.from_row(row) == RECORD
    assert OutboxRecord.from_row({**row, "payload": b'{"a":1}'}) == RECORD


class RecordingDatabase:
    """``Database.execute`` as the publisher uses it: one autocommit statement per call."""

    def __init__(self, fail: bool = False) -> None:
        self.statements: list[tuple[str, tuple[Any, ...], str]] = []
        self.fail = fail

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        if self.fail:
            raise DependencyUnavailable("Database is unavailable")
        self.statements.append((sql, params, threading.current_thread().name))
        return len(params)


def _record(outbox_id: int) -> OutboxRecord:
    return OutboxRecord(outbox_id, f"e-{outbox_id}", "PAYMENT_AUTHORIZED", "payment.authorized", "p-1", b"{}")


def _marking_publisher(interval_ms: int, breaker: PassThroughBreaker | None = None) -> KafkaPublisher:
    config = PublisherConfig(kafka_publish_timeout_ms=800, outbox_mark_interval_ms=interval_ms)
    return KafkaPublisher("h1:9092", config, breaker or PassThroughBreaker(), FakeProducer)


def test_published_marks_leave_the_request_and_are_written_together() -> None:
    database = RecordingDatabase()
    publisher = _marking_publisher(interval_ms=200)
    for outbox_id in (11, 12, 13):
        publisher.publish_and_record([_record(outbox_id)], database)  # type: ignore[arg-type]
    assert database.statements == [], "no write in the request path"
    deadline = time.monotonic() + 5
    while not database.statements and time.monotonic() < deadline:
        time.sleep(0.01)
    [(sql, params, thread)] = database.statements
    assert sql.startswith("UPDATE outbox_event FORCE INDEX (PRIMARY) SET published_at")
    assert "published_at IS NULL" in sql
    assert params == (11, 12, 13)
    assert thread == "outbox-marks"


def test_failed_attempts_are_recorded_in_the_request_and_not_marked() -> None:
    database = RecordingDatabase()
    publisher = _marking_publisher(interval_ms=200, breaker=PassThroughBreaker(open_=True))
    publisher.publish_and_record([_record(21)], database)  # type: ignore[arg-type]
    [(sql, params, thread)] = database.statements
    assert "last_error = %s" in sql and params[1] == 21 and BREAKER_OPEN_ERROR in params[0]
    assert thread == threading.current_thread().name
    publisher.close()
    assert len(database.statements) == 1, "nothing to mark published"


def test_mark_interval_zero_marks_in_the_request() -> None:
    database = RecordingDatabase()
    publisher = _marking_publisher(interval_ms=0)
    publisher.publish_and_record([_record(31)], database)  # type: ignore[arg-type]
    [(sql, params, thread)] = database.statements
    assert sql.startswith("UPDATE outbox_event FORCE INDEX (PRIMARY) SET published_at") and params == (31,)
    assert thread == threading.current_thread().name


def test_close_writes_pending_marks_and_a_database_outage_drops_them() -> None:
    database = RecordingDatabase()
    publisher = _marking_publisher(interval_ms=1000)
    publisher.publish_and_record([_record(41)], database)  # type: ignore[arg-type]
    publisher.close()
    assert [params for _, params, _ in database.statements] == [(41,)]
    down, other = RecordingDatabase(fail=True), RecordingDatabase()
    marks = PublishedMarks(interval=1.0)
    marks.add(down, [42])  # type: ignore[arg-type]
    marks.add(other, [43])  # type: ignore[arg-type]
    assert marks.flush() == 1, "the outage drops its marks (the relay sends the row again), not the others'"
    assert [params for _, params, _ in other.statements] == [(43,)]
    assert marks.flush() == 0


@pytest.mark.parametrize("interval_ms", [-1, 1001])
def test_mark_interval_stays_inside_the_relay_grace_period(interval_ms: int) -> None:
    with pytest.raises(ConfigError, match="PAYFN_OUTBOX_MARK_INTERVAL_MS"):
        PublisherConfig(outbox_mark_interval_ms=interval_ms).validate()
