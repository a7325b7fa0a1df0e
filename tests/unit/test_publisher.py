"""KafkaPublisher with a fake producer and breaker: what it sends, and that it never raises."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from kafka.errors import KafkaTimeoutError
from payfn_shared.breaker import CallNotPermittedError
from payfn_shared.outbox import OutboxRecord
from payfn_shared.publisher import BREAKER_OPEN_ERROR, KafkaPublisher, PublisherConfig

RECORD = OutboxRecord(7, "e-1", "PAYMENT_AUTHORIZED", "payment.authorized", "p-1", b'{"a":1}')


class FakeFuture:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.timeout: float | None = None

    def get(self, timeout: float) -> None:
        self.timeout = timeout
        if self.error:
            raise self.error


class FakeProducer:
    instances: ClassVar[list[FakeProducer]] = []

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.error: Exception | None = None
        self.closed = False
        FakeProducer.instances.append(self)

    def send(self, topic: str, **kwargs: Any) -> FakeFuture:
        self.sent.append((topic, kwargs))
        return FakeFuture(self.error)

    def close(self, timeout: float) -> None:
        self.closed = True


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
    assert config["bootstrap_servers"] == ["h1:9092", "h2:9092"]
    assert config["acks"] == "all" and config["enable_idempotence"] is True
    assert config["max_block_ms"] == 800 and config["bootstrap_timeout_ms"] == 800
    publisher.publish([RECORD])
    assert len(FakeProducer.instances) == 1, "the producer is reused warm"


def test_timeout_is_a_failed_outcome_and_keeps_the_producer() -> None:
    publisher = _publisher(PassThroughBreaker())
    publisher.publish([RECORD])
    FakeProducer.instances[0].error = KafkaTimeoutError("no ack")
    outcome, = publisher.publish([RECORD])
    assert not outcome.published and "KafkaTimeoutError" in (outcome.error or "")
    assert not FakeProducer.instances[0].closed


def test_other_errors_drop_the_producer() -> None:
    publisher = _publisher(PassThroughBreaker())
    publisher.publish([RECORD])
    FakeProducer.instances[0].error = RuntimeError("fatal epoch")
    assert not publisher.publish([RECORD])[0].published
    assert FakeProducer.instances[0].closed
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
