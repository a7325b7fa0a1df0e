"""The outbox relay: publish what ingest could not, exactly once per outbox row.

Ingest publishes each event right after its commit; a row stays unpublished only
when Kafka was down, the breaker was open or the process died in between. The
relay (a scheduled function, several may run at once) sends those rows later.

Why: each batch is locked with ``FOR UPDATE SKIP LOCKED`` and marked in the same
transaction, so two relays never send one row; young rows are left to ingest;
a batch is one pipelined call through the breaker, which keeps a payment's
events in order; an open breaker stops the run at once.

Design notes (ordering, grace period, gauges): docs/PAYMENTS.md#outbox-relay
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError

from payfn_shared.payments.outbox import OutboxRecord, mark_failed, mark_published
from payfn_shared.payments.publisher import KafkaDeliveryError, KafkaPublisher, PublishOutcome
from payfn_shared.platform.breaker import CallNotPermittedError
from payfn_shared.platform.config import ConfigError, load_dataclass, load_settings
from payfn_shared.platform.db import Cursor, Database

log = logging.getLogger(__name__)

BACKLOG_METRIC = "payfn_outbox_backlog"
OLDEST_AGE_METRIC = "payfn_outbox_oldest_age_seconds"

SELECT_BATCH = (
    "SELECT id, event_id, event_type, topic, partition_key, payload FROM outbox_event"
    " WHERE published_at IS NULL AND created_at <= UTC_TIMESTAMP(3) - INTERVAL %s MICROSECOND"
    " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
)
SELECT_BACKLOG = (
    "SELECT COUNT(*) AS backlog, TIMESTAMPDIFF(MICROSECOND, MIN(created_at), UTC_TIMESTAMP(3)) AS age_us"
    " FROM outbox_event WHERE published_at IS NULL"
)


@dataclass(frozen=True)
class RelayConfig:
    """Relay knobs (env ``PAYFN_RELAY_*``).

    ``relay_batch_size`` rows are locked per transaction; one run keeps taking
    batches until the backlog is empty, ``relay_max_run_seconds`` has passed or the
    invocation's remaining time drops below ``relay_reserve_ms``.
    """

    relay_batch_size: int = 200
    relay_min_age_ms: int = 3000
    relay_max_run_seconds: float = 20.0
    relay_reserve_ms: int = 3000

    def validate(self) -> None:
        if not 1 <= self.relay_batch_size <= 5000:
            raise ConfigError("PAYFN_RELAY_BATCH_SIZE must be between 1 and 5000")
        if self.relay_min_age_ms < 0:
            raise ConfigError("PAYFN_RELAY_MIN_AGE_MS must not be negative")
        if self.relay_max_run_seconds <= 0:
            raise ConfigError("PAYFN_RELAY_MAX_RUN_SECONDS must be positive")
        if self.relay_reserve_ms < 0:
            raise ConfigError("PAYFN_RELAY_RESERVE_MS must not be negative")


@dataclass(frozen=True)
class Backlog:
    """Unpublished rows right now and the age of the oldest (0 when there is none)."""

    size: int
    oldest_age_seconds: float


@dataclass
class RelayReport:
    """What one relay run did; ``to_dict`` is the function's result."""

    published: int = 0
    failed: int = 0
    deferred: int = 0
    batches: int = 0
    breaker_open: bool = False
    backlog: Backlog = field(default_factory=lambda: Backlog(0, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "failed": self.failed,
            "deferred": self.deferred,
            "batches": self.batches,
            "breakerOpen": self.breaker_open,
            "backlog": self.backlog.size,
            "oldestAgeSeconds": self.backlog.oldest_age_seconds,
            "metrics": {
                BACKLOG_METRIC: self.backlog.size,
                OLDEST_AGE_METRIC: self.backlog.oldest_age_seconds,
            },
        }


def read_backlog(cursor: Cursor) -> Backlog:
    """Count the unpublished rows (served by the ``(published_at, id)`` index)."""
    cursor.execute(SELECT_BACKLOG)
    row = cursor.fetchone() or {}
    age_us = row.get("age_us")
    return Backlog(int(row.get("backlog") or 0), 0.0 if age_us is None else max(int(age_us), 0) / 1e6)


#: Errors that belong to the record, not to Kafka: the client refuses such a record
#: before any I/O, and sending it again can never succeed.
RECORD_FAULTS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.TOPIC_EXCEPTION,
    KafkaError._INVALID_ARG, KafkaError.INVALID_RECORD,
})


class BatchFailed(Exception):
    """Kafka failed some records of a batch: the breaker counts the batch as one failed call."""

    def __init__(self, outcomes: list[PublishOutcome]) -> None:
        super().__init__(f"{sum(not o.published for o in outcomes)} of {len(outcomes)} records failed")
        self.outcomes = outcomes


class RelayPublisher(KafkaPublisher):
    """The shared publisher (same producer settings, same breaker) with pipelined batches.

    Sending a batch as one breaker call, all records in flight at once, costs one
    broker round trip per batch instead of one per row: the relay drains a backlog
    of thousands of rows in seconds. The idempotent producer keeps the records of
    one partition in order; the relay sends at most one row per key per batch, so
    a failed row can never be overtaken by a later event of its payment.
    """

    def _send_all(self, records: Sequence[OutboxRecord]) -> list[PublishOutcome]:
        """Send every record, then wait for every ack (within one publish timeout).

        Raises :class:`BatchFailed` (carrying every outcome) when Kafka failed any
        record. A record the client rejects before any I/O (oversized value, a topic
        name Kafka forbids) is the row's fault, not Kafka's: it fails alone,
        unnoticed by the breaker.
        """
        outcomes: list[PublishOutcome] = []
        broker_failure = False
        for record, error in zip(records, self.deliver(records), strict=True):
            if error is None:
                outcomes.append(PublishOutcome(record))
                continue
            outcomes.append(PublishOutcome(record, f"{type(error).__name__}: {error}"))
            if not (isinstance(error, KafkaDeliveryError) and error.error.code() in RECORD_FAULTS):
                broker_failure = True
        if broker_failure:
            raise BatchFailed(outcomes)
        return outcomes

    def publish_batch(self, records: Sequence[OutboxRecord]) -> list[PublishOutcome] | None:
        """Outcomes per record; None when the breaker refused the call (nothing was sent)."""
        if not records:
            return []
        try:
            return self.breaker.call(self._send_all, records)
        except CallNotPermittedError:
            return None
        except BatchFailed as failed:
            log.warning("outbox relay: %s", failed)
            return failed.outcomes


class OutboxRelay:
    """Publishes unpublished outbox rows through the shared publisher's producer and breaker."""

    def __init__(
        self, database: Database, publisher: RelayPublisher, config: RelayConfig | None = None
    ) -> None:
        self.database = database
        self.publisher = publisher
        self.config = config or load_dataclass(RelayConfig)

    def run(self, remaining_ms: Callable[[], int] | None = None) -> RelayReport:
        """Drain the backlog within the time budget; never raises for Kafka trouble."""
        report = RelayReport()
        blocked_keys: set[str] = set()
        deadline = time.monotonic() + self.config.relay_max_run_seconds
        while time.monotonic() < deadline:
            if remaining_ms is not None and remaining_ms() < self.config.relay_reserve_ms:
                break
            taken, sent, deferred = self.database.run_in_transaction(
                lambda cursor: self._relay_batch(cursor, report, blocked_keys))
            report.batches += 1
            if report.breaker_open or sent == 0:
                break
            if taken < self.config.relay_batch_size and deferred == 0:
                break
        report.backlog = self.database.run_in_transaction(read_backlog)
        return report

    def _relay_batch(
        self, cursor: Cursor, report: RelayReport, blocked_keys: set[str]
    ) -> tuple[int, int, int]:
        """Lock one batch, send its first row of each key, record the outcomes.

        Returns (rows locked, rows sent, rows deferred). A key whose row failed in
        this run stays blocked for the rest of the run (its later rows wait).
        """
        cursor.execute(SELECT_BATCH, (self.config.relay_min_age_ms * 1000, self.config.relay_batch_size))
        records = [OutboxRecord.from_row(row) for row in cursor.fetchall()]
        chosen: list[OutboxRecord] = []
        keys_in_batch: set[str] = set()
        for record in records:
            if record.key in blocked_keys or record.key in keys_in_batch:
                continue
            keys_in_batch.add(record.key)
            chosen.append(record)
        deferred = len(records) - len(chosen)
        report.deferred += deferred
        outcomes = self.publisher.publish_batch(chosen)
        if outcomes is None:
            report.breaker_open = True
            return len(records), 0, deferred
        mark_published(cursor, [o.record.id for o in outcomes if o.published])
        for outcome in outcomes:
            if not outcome.published:
                mark_failed(cursor, outcome.record.id, outcome.error or "unknown error")
        for outcome in outcomes:
            if outcome.published:
                report.published += 1
            else:
                report.failed += 1
                blocked_keys.add(outcome.record.key)
        return len(records), len(chosen), deferred


_publisher: RelayPublisher | None = None
_publisher_lock = threading.Lock()


def get_relay_publisher() -> RelayPublisher:
    """The process-wide relay publisher (kept warm between invocations like ingest's)."""
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = RelayPublisher(load_settings().kafka_bootstrap)
        return _publisher
