"""Publishing outbox rows to Kafka through the ``kafka-publisher`` circuit breaker.

Ingest calls :meth:`KafkaPublisher.publish_and_record` right after its transaction
committed; the outbox relay reuses :meth:`KafkaPublisher.publish` and
:meth:`KafkaPublisher.record_outcomes` inside its own ``SKIP LOCKED`` transaction.

Why it looks like this:
- The producer is idempotent with ``acks=all``, so broker-side retries cannot
  duplicate or reorder a payment's events; it is created once per process and
  reused warm, because creating one costs a metadata round trip.
- Every wait on the broker is bounded by ``kafka_publish_timeout_ms`` (bootstrap,
  metadata via ``max_block_ms``, and the delivery future), so a down broker costs a
  request at most that long; after enough failures the breaker opens and calls
  are refused at once, so no request waits on Kafka at all.
- A failure never reaches the client: the row stays unpublished (attempts and
  last error recorded) and the relay publishes it later. Marks are guarded with
  ``published_at IS NULL`` (see :mod:`payfn_shared.outbox`).
- Only the Kafka protocol is used: any Kafka, Redpanda or MSK works with another
  bootstrap address.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError

from payfn_shared.breaker import CallNotPermittedError, get_breaker
from payfn_shared.config import ConfigError, load_dataclass, load_settings
from payfn_shared.db import Database
from payfn_shared.errors import DependencyUnavailable
from payfn_shared.outbox import Executor, OutboxRecord, mark_failed, mark_published

log = logging.getLogger(__name__)

T = TypeVar("T")
BREAKER_NAME = "kafka-publisher"
BREAKER_OPEN_ERROR = "CallNotPermitted: circuit breaker kafka-publisher is open"


@dataclass(frozen=True)
class PublisherConfig:
    """Producer knobs (env ``PAYFN_KAFKA_PUBLISH_TIMEOUT_MS``, ``PAYFN_KAFKA_CLIENT_ID``)."""

    kafka_publish_timeout_ms: int = 1500
    kafka_client_id: str = "payfn-ingest"

    def validate(self) -> None:
        if not 50 <= self.kafka_publish_timeout_ms <= 60_000:
            raise ConfigError("PAYFN_KAFKA_PUBLISH_TIMEOUT_MS must be between 50 and 60000")


class Breaker(Protocol):
    """What the publisher needs of a circuit breaker (``payfn_shared.breaker``)."""

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


@dataclass(frozen=True)
class PublishOutcome:
    """What happened to one outbox row; ``error`` is None when it was published."""

    record: OutboxRecord
    error: str | None = None

    @property
    def published(self) -> bool:
        return self.error is None


class KafkaPublisher:
    """Sends outbox rows to Kafka (key = paymentId, headers eventId/eventType)."""

    def __init__(
        self,
        bootstrap_servers: str,
        config: PublisherConfig | None = None,
        breaker: Breaker | None = None,
        producer_factory: Callable[..., Any] = KafkaProducer,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.config = config or load_dataclass(PublisherConfig)
        self._breaker = breaker
        self._producer_factory = producer_factory
        self._producer: Any = None
        self._lock = threading.Lock()

    @property
    def breaker(self) -> Breaker:
        if self._breaker is None:
            self._breaker = get_breaker(BREAKER_NAME)
        return self._breaker

    @property
    def timeout_seconds(self) -> float:
        return self.config.kafka_publish_timeout_ms / 1000.0

    def _get_producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                timeout_ms = self.config.kafka_publish_timeout_ms
                self._producer = self._producer_factory(
                    bootstrap_servers=self.bootstrap_servers.split(","),
                    client_id=self.config.kafka_client_id,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=0,
                    max_block_ms=timeout_ms,
                    bootstrap_timeout_ms=timeout_ms,
                    request_timeout_ms=timeout_ms,
                    delivery_timeout_ms=2 * timeout_ms,
                    reconnect_backoff_max_ms=1000,
                )
            return self._producer

    def _drop_producer(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # a broken producer may fail to close: it is dropped anyway
                log.debug("closing the Kafka producer failed", exc_info=True)

    def send(self, record: OutboxRecord) -> None:
        """Write one record and wait for the broker's ack, within the publish timeout.

        Raises on any failure; run it through the breaker (``publish`` does).
        """
        deadline = time.monotonic() + self.timeout_seconds
        producer = self._get_producer()
        try:
            future = producer.send(
                record.topic, key=record.key.encode(), value=record.payload, headers=record.headers()
            )
            future.get(timeout=max(deadline - time.monotonic(), 0.001))
        except KafkaTimeoutError:
            raise
        except Exception:
            # Anything but a timeout may leave an idempotent producer unusable
            # (fatal sequence/epoch errors): start from a fresh one next time.
            self._drop_producer()
            raise

    def publish(self, records: Sequence[OutboxRecord]) -> list[PublishOutcome]:
        """Publish each record through the breaker; never raises for Kafka trouble."""
        outcomes = []
        for record in records:
            try:
                self.breaker.call(self.send, record)
            except CallNotPermittedError:
                outcomes.append(PublishOutcome(record, BREAKER_OPEN_ERROR))
            except Exception as exc:
                log.warning("publishing outbox row %s to %s failed: %s", record.id, record.topic, exc)
                outcomes.append(PublishOutcome(record, f"{type(exc).__name__}: {exc}"))
            else:
                outcomes.append(PublishOutcome(record))
        return outcomes

    @staticmethod
    def record_outcomes(executor: Executor, outcomes: Sequence[PublishOutcome]) -> None:
        """Mark published rows and note failed attempts (in the relay's transaction, or autocommit)."""
        mark_published(executor, [o.record.id for o in outcomes if o.published])
        for outcome in outcomes:
            if outcome.error is not None:
                mark_failed(executor, outcome.record.id, outcome.error)

    def publish_and_record(self, records: Sequence[OutboxRecord], database: Database) -> list[PublishOutcome]:
        """Ingest's path: publish after commit, then record each outcome with one autocommit
        UPDATE (a guarded single-row write needs no transaction around it).

        If recording fails (database gone right now) the row simply stays
        unpublished and the relay sends it again: consumers dedupe by eventId.
        """
        outcomes = self.publish(records)
        try:
            self.record_outcomes(database, outcomes)
        except DependencyUnavailable as exc:
            ids = [r.id for r in records]
            log.warning("could not record the publish outcome of outbox rows %s: %s", ids, exc)
        return outcomes

    def close(self) -> None:
        self._drop_producer()


_publisher: KafkaPublisher | None = None
_publisher_lock = threading.Lock()


def get_publisher() -> KafkaPublisher:
    """The process-wide publisher for the configured bootstrap servers."""
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = KafkaPublisher(load_settings().kafka_bootstrap)
        return _publisher


def reset_publisher() -> None:
    """Close and forget the cached publisher (tests and reconfiguration)."""
    global _publisher
    with _publisher_lock:
        publisher, _publisher = _publisher, None
    if publisher is not None:
        publisher.close()
