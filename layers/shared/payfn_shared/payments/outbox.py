"""The transactional outbox table: writing events with the state change, marking them.

Ingest writes the outbox row in the same transaction as the payment change, so an
event exists if and only if the change committed. Publishing happens after the
commit; the marks below are guarded with ``published_at IS NULL`` so that once a
row is marked published nobody (ingest or any relay) publishes or re-marks it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from payfn_shared.payments.events import PaymentEvent
from payfn_shared.platform.db import Cursor, in_list

MAX_ERROR_LENGTH = 512


@dataclass(frozen=True)
class OutboxRecord:
    """One outbox row as the publisher needs it (the relay builds these from SELECTs)."""

    id: int
    event_id: str
    event_type: str
    topic: str
    key: str
    payload: bytes

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> OutboxRecord:
        """From a row with columns id, event_id, event_type, topic, partition_key, payload."""
        payload = row["payload"]
        return cls(
            id=int(row["id"]),
            event_id=str(row["event_id"]),
            event_type=str(row["event_type"]),
            topic=str(row["topic"]),
            key=str(row["partition_key"]),
            payload=payload.encode("utf-8") if isinstance(payload, str) else bytes(payload),
        )

    def headers(self) -> list[tuple[str, bytes]]:
        return [("eventId", self.event_id.encode()), ("eventType", self.event_type.encode())]


class Executor(Protocol):
    """A pymysql cursor (inside a transaction) or ``Database`` (one autocommit statement)."""

    def execute(self, sql: str, params: tuple[Any, ...], /) -> int: ...


def insert_event(cursor: Cursor, event: PaymentEvent, created_at: datetime) -> OutboxRecord:
    """Add the event to the outbox inside the caller's transaction."""
    value = event.value()
    cursor.execute(
        "INSERT INTO outbox_event (event_id, aggregate_id, event_type, topic, partition_key, payload,"
        " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (event.event_id, event.key, event.event_type, event.topic, event.key, value, created_at),
    )
    outbox_id = int(cursor.lastrowid)
    return OutboxRecord(outbox_id, event.event_id, event.event_type, event.topic, event.key, value)


#: ``{ids}`` becomes one ``%s`` placeholder per row (``in_list``): the ids stay parameters.
MARK_PUBLISHED = (
    "UPDATE outbox_event FORCE INDEX (PRIMARY)"
    " SET published_at = UTC_TIMESTAMP(3), attempts = attempts + 1, last_error = NULL"
    " WHERE id IN ({ids}) AND published_at IS NULL"
)


def mark_published(executor: Executor, outbox_ids: Iterable[int]) -> int:
    """Mark rows published (only those not yet marked) in one statement; returns how many.

    ``FORCE INDEX (PRIMARY)`` makes ``id IN (…)`` one primary-key point lookup per id
    whatever the table holds, so the UPDATE locks exactly the rows it marks. Left to
    the optimizer, a small table was scanned, and under REPEATABLE READ a scan locks
    every row it reads: two relays marking their own batches deadlocked on each
    other's rows, and the retried batch was published twice. A join on a JSON list of
    ids was planned as a scan of every unpublished row, too.
    """
    ids = [int(outbox_id) for outbox_id in outbox_ids]
    if not ids:
        return 0
    marks, params = in_list(ids)
    return executor.execute(MARK_PUBLISHED.format(ids=marks), params)


def mark_failed(executor: Executor, outbox_id: int, error: str) -> int:
    """Record a failed or refused attempt; the row stays for the relay."""
    return executor.execute(
        "UPDATE outbox_event SET attempts = attempts + 1, last_error = %s"
        " WHERE id = %s AND published_at IS NULL",
        (error[:MAX_ERROR_LENGTH], outbox_id),
    )
