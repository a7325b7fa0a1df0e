"""Publishing outbox rows to Kafka through the ``kafka-publisher`` circuit breaker.

Ingest calls :meth:`KafkaPublisher.publish_and_record` right after its transaction
committed; the outbox relay reuses :meth:`KafkaPublisher.publish` and
:meth:`KafkaPublisher.record_outcomes` inside its own ``SKIP LOCKED`` transaction.

Why: one warm idempotent (``acks=all``) librdkafka producer per process, since this
is the hottest path; every broker wait is bounded by ``kafka_publish_timeout_ms``
and the breaker, so a down broker never stalls requests; a failure never reaches
the client (the relay publishes the row later); ``published_at`` marks are batched
off the request path (:class:`PublishedMarks`).

Design notes (timeouts, marks, the relay's grace period): docs/PAYMENTS.md#kafka-publisher
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer

from payfn_shared.payments.outbox import Executor, OutboxRecord, mark_failed, mark_published
from payfn_shared.platform.breaker import CallNotPermittedError, get_breaker
from payfn_shared.platform.config import ConfigError, load_dataclass, load_settings
from payfn_shared.platform.db import Database
from payfn_shared.platform.errors import DependencyUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
BREAKER_NAME = "kafka-publisher"
BREAKER_OPEN_ERROR = "CallNotPermitted: circuit breaker kafka-publisher is open"
#: How much longer than librdkafka's own ``message.timeout.ms`` the caller waits for
#: the delivery report, so that normally librdkafka's verdict is the one recorded.
DELIVERY_REPORT_GRACE_S = 0.1
#: The longest mark interval accepted: far inside the relay's grace period (3 s).
MAX_MARK_INTERVAL_MS = 1000


class KafkaTimeoutError(Exception):
    """No acknowledgement within the publish timeout (broker down, slow or unreachable)."""


class KafkaDeliveryError(Exception):
    """The broker or the client refused a record; ``fatal`` when the producer is unusable."""

    def __init__(self, error: KafkaError, topic: str) -> None:
        super().__init__(f"{error.name()}: {error.str()} (topic {topic!r})")
        self.error = error
        self.fatal = bool(error.fatal())


class _Pending:
    """Marks a record whose delivery report has not arrived yet."""


PENDING = _Pending()


@dataclass(frozen=True)
class PublisherConfig:
    """Producer knobs (env ``PAYFN_KAFKA_PUBLISH_TIMEOUT_MS``, ``PAYFN_KAFKA_CLIENT_ID``,
    ``PAYFN_OUTBOX_MARK_INTERVAL_MS``: how long published marks are gathered before
    one UPDATE writes them; 0 writes each in the request, as Lambda on AWS needs,
    where an idle environment is frozen with its background thread)."""

    kafka_publish_timeout_ms: int = 1500
    kafka_client_id: str = "payfn-ingest"
    outbox_mark_interval_ms: int = 100

    def validate(self) -> None:
        if not 50 <= self.kafka_publish_timeout_ms <= 60_000:
            raise ConfigError("PAYFN_KAFKA_PUBLISH_TIMEOUT_MS must be between 50 and 60000")
        if not 0 <= self.outbox_mark_interval_ms <= MAX_MARK_INTERVAL_MS:
            raise ConfigError(f"PAYFN_OUTBOX_MARK_INTERVAL_MS must be between 0 and {MAX_MARK_INTERVAL_MS}"
                              " (well inside the relay's grace period)")


class PublishedMarks:
    """Outbox rows the broker acknowledged, marked published by one background thread.

    ``add`` only appends ids; the thread wakes on the first id, waits ``interval``
    so that the ids of every request in between join, and marks them all in one
    guarded UPDATE per database on its own connection (``Database`` keeps one per
    thread). A failed UPDATE is logged and dropped: the rows stay unpublished and
    the relay sends them again once they are past its grace period.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pending: dict[Database, list[int]] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, database: Database, outbox_ids: Sequence[int]) -> None:
        with self._wake:
            self._pending.setdefault(database, []).extend(outbox_ids)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="outbox-marks", daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
            time.sleep(self.interval)
            self.flush()

    def flush(self) -> int:
        """Mark everything gathered so far, now; returns how many rows were marked."""
        with self._wake:
            pending, self._pending = self._pending, {}
        marked = 0
        for database, ids in pending.items():
            try:
                marked += mark_published(database, ids)
            except DependencyUnavailable as exc:
                log.warning("could not mark %d published outbox rows (the relay will send them again): %s",
                            len(ids), exc)
        return marked


class Breaker(Protocol):
    """What the publisher needs of a circuit breaker (``payfn_shared.platform.breaker``)."""

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
        producer_factory: Callable[[dict[str, Any]], Any] = Producer,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.config = config or load_dataclass(PublisherConfig)
        self._breaker = breaker
        self._producer_factory = producer_factory
        self._producer: Any = None
        self._lock = threading.Lock()
        self._marks = PublishedMarks(self.config.outbox_mark_interval_ms / 1000.0)

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
                self._producer = self._producer_factory({
                    "bootstrap.servers": self.bootstrap_servers,
                    "client.id": self.config.kafka_client_id,
                    "acks": "all",
                    "enable.idempotence": True,
                    "linger.ms": 0,
                    "message.timeout.ms": self.config.kafka_publish_timeout_ms,
                    "socket.timeout.ms": max(self.config.kafka_publish_timeout_ms, 10),
                    "reconnect.backoff.max.ms": 1000,
                })
            return self._producer

    def _drop_producer(self) -> None:
        """Forget the producer without waiting for its queue: its records are the outbox's anyway."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.purge()
            except (KafkaException, RuntimeError):  # a broken producer may fail to purge: dropped anyway
                log.debug("purging the Kafka producer failed", exc_info=True)

    def warm(self) -> None:
        """Create the producer now, so librdkafka connects and does the idempotent
        producer's handshake (0.5–1 s on a fresh connection) in the background."""
        self._get_producer().poll(0)

    def deliver(self, records: Sequence[OutboxRecord]) -> list[BaseException | None]:
        """Send every record, then wait for every delivery report, within one publish timeout.

        Returns one entry per record: None when the broker acknowledged it, else the
        error (:class:`KafkaTimeoutError` when no report came in time,
        :class:`KafkaDeliveryError` when the broker or the client refused it). A
        record the client rejects before any I/O (oversized value) fails alone. The
        records of a batch are all in flight at once: one round trip per batch.
        """
        deadline = time.monotonic() + self.timeout_seconds + DELIVERY_REPORT_GRACE_S
        producer = self._get_producer()
        reports: list[KafkaError | _Pending | None] = [PENDING] * len(records)

        def on_delivery(index: int) -> Callable[[KafkaError | None, Any], None]:
            def report(error: KafkaError | None, _message: Any) -> None:
                reports[index] = error
            return report

        for index, record in enumerate(records):
            try:
                producer.produce(record.topic, key=record.key.encode(), value=record.payload,
                                 headers=record.headers(), on_delivery=on_delivery(index))
            except KafkaException as exc:
                reports[index] = exc.args[0] if exc.args else KafkaError(KafkaError._FAIL)
            except BufferError:
                reports[index] = KafkaError(KafkaError._QUEUE_FULL)
        while any(r is PENDING for r in reports):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Short slices: with several threads on one producer, another thread's
            # poll may serve this thread's reports.
            producer.poll(min(remaining, 0.05))
        outcomes: list[BaseException | None] = []
        for record, report in zip(records, reports, strict=True):
            if report is PENDING:
                outcomes.append(KafkaTimeoutError(
                    f"no delivery report within {self.timeout_seconds:g} s (topic {record.topic!r})"))
            elif report is None:
                outcomes.append(None)
            elif report.code() == KafkaError._MSG_TIMED_OUT:
                outcomes.append(KafkaTimeoutError(f"{report.str()} (topic {record.topic!r})"))
            else:
                outcomes.append(KafkaDeliveryError(report, record.topic))
        return outcomes

    def send(self, record: OutboxRecord) -> None:
        """Write one record and wait for the broker's ack, within the publish timeout.

        Raises on any failure; run it through the breaker (``publish`` does).
        """
        error = self.deliver([record])[0]
        if error is None:
            return
        if isinstance(error, KafkaDeliveryError) and error.fatal:
            # A fatal error (idempotent producer fenced or out of sequence) leaves the
            # producer unusable: start from a fresh one next time.
            self._drop_producer()
        raise error

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
        """Ingest's path: publish after commit, then record each outcome.

        Published rows are handed to :class:`PublishedMarks` (or, with a mark
        interval of 0, marked here by one autocommit UPDATE); a failed attempt is
        recorded here at once (attempts, last error). If recording fails (database
        gone right now) the row simply stays unpublished and the relay sends it
        again: consumers dedupe by eventId.
        """
        outcomes = self.publish(records)
        published = [o.record.id for o in outcomes if o.published]
        try:
            if published and self.config.outbox_mark_interval_ms:
                self._marks.add(database, published)
                self.record_outcomes(database, [o for o in outcomes if not o.published])
            else:
                self.record_outcomes(database, outcomes)
        except DependencyUnavailable as exc:
            ids = [r.id for r in records]
            log.warning("could not record the publish outcome of outbox rows %s: %s", ids, exc)
        return outcomes

    def close(self) -> None:
        """Give in-flight records a moment to be acknowledged, write the pending marks,
        then drop the producer."""
        with self._lock:
            producer = self._producer
        if producer is not None:
            producer.flush(self.timeout_seconds)
        self._marks.flush()
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


def warm_publisher(publisher: Callable[[], KafkaPublisher] | None = None) -> None:
    """At a function's init (module import), when running as a function.

    Lambda's advice is to create SDK clients during init: the handshake then
    overlaps the rest of the cold start instead of delaying the first request's
    publish past its timeout. Imported outside a function (tests, tools), where
    ``AWS_LAMBDA_FUNCTION_NAME`` is not set, nothing is started.
    """
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        (publisher or get_publisher)().warm()


def reset_publisher() -> None:
    """Close and forget the cached publisher (tests and reconfiguration)."""
    global _publisher
    with _publisher_lock:
        publisher, _publisher = _publisher, None
    if publisher is not None:
        publisher.close()
