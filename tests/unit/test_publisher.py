"""KafkaPublisher with a fake producer and breaker: what it sends, and that it never raises."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError
from payfn_shared.breaker import CallNotPermittedError
from payfn_shared.outbox import OutboxRecord
from payfn_shared.publisher import BREAKER_OPEN_ERROR, KafkaPublisher, PublisherConfig

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
