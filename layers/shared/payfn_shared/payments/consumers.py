"""Consumers of the payment events: decoding, idempotent effects, partial batch responses.

The CONSUMER-WORKER functions are triggered by Kafka event sources; delivery is
at least once, so every effect is written in ONE transaction with its
``processed_event`` row (consumer, eventId) and happens exactly once. The ledger
consumer only verifies (and repairs) what ingest wrote; the balance projection
keeps ``merchant_balance``. A poison record is reported in ``batchItemFailures``
(dead-lettered, the rest of the batch applied); a dependency failure fails the
whole invocation so the batch is retried instead.

Design notes: docs/PAYMENTS.md#event-consumers
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pymysql
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEvent, KafkaEventRecord

from payfn_shared.payments.domain import CAPTURE, REFUND, Transition
from payfn_shared.payments.events import EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_REFUNDED, TOPIC_BY_EVENT_TYPE
from payfn_shared.platform.db import Cursor, Database, error_number, in_list
from payfn_shared.platform.errors import DependencyUnavailable

log = logging.getLogger(__name__)

LEDGER_CONSUMER = "ledger-consumer"
BALANCE_CONSUMER = "balance-projection"

APPLIED, DUPLICATE, VERIFIED, REPAIRED = "applied", "duplicate", "verified", "repaired"
FOREIGN_KEY_MISSING = 1452
MAX_ERROR_MESSAGE = 500


class RecordError(Exception):
    """A record that cannot be applied however often it is retried (goes to the DLQ)."""

    error_type: ClassVar[str] = "RecordError"


class InvalidJson(RecordError):
    error_type = "InvalidJson"


class UnknownEventType(RecordError):
    error_type = "UnknownEventType"


class InvalidEvent(RecordError):
    error_type = "InvalidEvent"


class PaymentNotFound(RecordError):
    error_type = "PaymentNotFound"


class LedgerMismatch(RecordError):
    """The ledger entry exists but disagrees with the event: a real imbalance to look at."""

    error_type = "LedgerMismatch"


@dataclass(frozen=True)
class ConsumedEvent:
    """The fields of a payment event the consumers use (validated)."""

    event_id: str
    event_type: str
    payment_id: str
    merchant_id: str
    amount: int
    currency: str


def _text(payload: dict[str, Any], name: str, max_length: int) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not 1 <= len(value) <= max_length:
        raise InvalidEvent(f"{name} must be a string of 1-{max_length} characters")
    return value


def decode_event(value: bytes) -> ConsumedEvent:
    """Parse and validate one record value; raises a :class:`RecordError` naming the problem."""
    try:
        payload = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidJson(f"record value is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidJson("record value is not a JSON object")
    event_type = payload.get("eventType")
    if event_type not in TOPIC_BY_EVENT_TYPE:
        raise UnknownEventType(f"unknown eventType {event_type!r}")
    amount = payload.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
        raise InvalidEvent("amount must be a positive integer (minor units)")
    currency = _text(payload, "currency", 3)
    if len(currency) != 3:
        raise InvalidEvent("currency must be a 3-letter ISO 4217 code")
    return ConsumedEvent(
        event_id=_text(payload, "eventId", 36),
        event_type=event_type,
        payment_id=_text(payload, "paymentId", 36),
        merchant_id=_text(payload, "merchantId", 32),
        amount=amount,
        currency=currency,
    )


def mark_processed(cursor: Cursor, consumer: str, event_id: str) -> bool:
    """Claim one event for ``consumer`` in the caller's transaction; False if already processed.

    A concurrent claim of the same event (two pollers during a rebalance) waits on
    the first one's key lock and then sees the duplicate, so only one applies it.
    """
    return bool(cursor.execute(
        "INSERT INTO processed_event (consumer, event_id, processed_at) VALUES (%s, %s, UTC_TIMESTAMP(3))"
        " ON DUPLICATE KEY UPDATE event_id = event_id",
        (consumer, event_id),
    ) == 1)


#: The batch's event ids travel as ONE JSON array parameter, unnested by JSON_TABLE.
SELECT_PROCESSED = (
    "SELECT p.event_id FROM JSON_TABLE(%s, '$[*]' COLUMNS (event_id VARCHAR(36) PATH '$')) AS j"
    " JOIN processed_event p ON p.consumer = %s AND p.event_id = j.event_id"
)
INSERT_PROCESSED = (
    "INSERT INTO processed_event (consumer, event_id, processed_at) SELECT %s, j.event_id, UTC_TIMESTAMP(3)"
    " FROM JSON_TABLE(%s, '$[*]' COLUMNS (event_id VARCHAR(36) PATH '$')) AS j"
)


def claim(cursor: Cursor, consumer: str, events: Sequence[ConsumedEvent]) -> list[ConsumedEvent]:
    """Claim a batch of events in the caller's transaction; returns the ones not processed before.

    Two statements for the whole batch (the ids travel as one JSON parameter), not
    two per event. If another transaction claims one of the ids meanwhile, the
    INSERT fails on the primary key, this transaction rolls back and the caller
    falls back to one transaction per event (:func:`mark_processed`).
    """
    unique = list({event.event_id: event for event in reversed(events)}.values())[::-1]
    if len(unique) == 1:
        return unique if mark_processed(cursor, consumer, unique[0].event_id) else []
    cursor.execute(SELECT_PROCESSED, (json.dumps([e.event_id for e in unique]), consumer))
    seen = {row["event_id"] for row in cursor.fetchall()}
    fresh = [event for event in unique if event.event_id not in seen]
    if fresh:
        cursor.execute(INSERT_PROCESSED, (consumer, json.dumps([e.event_id for e in fresh])))
    return fresh


def outcomes_in_order(events: Sequence[ConsumedEvent], results: dict[str, str]) -> list[str]:
    """One outcome per input event: its result the first time its eventId appears, else duplicate."""
    ordered = []
    for event in events:
        ordered.append(results.pop(event.event_id, DUPLICATE))
    return ordered


LEDGER_TRANSITIONS: dict[str, Transition] = {EVENT_CAPTURED: CAPTURE, EVENT_REFUNDED: REFUND}


def _ensure_ledger_entries(cursor: Cursor,
                           events: Sequence[tuple[ConsumedEvent, Transition]]) -> dict[str, str]:
    """Verify each event's ledger entry, writing the missing ones; one SELECT for the batch.

    The entries of every payment in the batch come back in one read (the unique
    ``(payment_id, transition)`` index serves ``payment_id IN (…)``), instead of
    one read per event; only a missing entry costs a statement of its own.
    """
    marks, params = in_list(sorted({event.payment_id for event, _ in events}))
    columns = "payment_id, transition, debit_account, credit_account, amount, currency"
    cursor.execute(f"SELECT {columns} FROM ledger_entry WHERE payment_id IN ({marks})", params)  # noqa: S608
    entries = {(row["payment_id"], row["transition"]):
               (row["debit_account"], row["credit_account"], int(row["amount"]), row["currency"])
               for row in cursor.fetchall()}
    results: dict[str, str] = {}
    for event, transition in events:
        wanted = (transition.debit_account, transition.credit_account, event.amount, event.currency)
        found = entries.get((event.payment_id, transition.name))
        if found is not None:
            if found != wanted:
                raise LedgerMismatch(f"{transition.name} entry of payment {event.payment_id} is {found}, "
                                     f"event {event.event_id} says {wanted}")
            results[event.event_id] = VERIFIED
            continue
        cursor.execute(
            "INSERT INTO ledger_entry (payment_id, transition, debit_account, credit_account, amount,"
            " currency, created_at) VALUES (%s, %s, %s, %s, %s, %s, UTC_TIMESTAMP(3))",
            (event.payment_id, transition.name, *wanted),
        )
        entries[(event.payment_id, transition.name)] = wanted
        log.warning("ledger entry %s of payment %s was missing; written from event %s",
                    transition.name, event.payment_id, event.event_id)
        results[event.event_id] = REPAIRED
    return results


def ledger_effect(cursor: Cursor, events: Sequence[ConsumedEvent]) -> list[str]:
    """The ledger consumer's effect in the caller's transaction: verify or write the missing entries."""
    results: dict[str, str] = {}
    entries: list[tuple[ConsumedEvent, Transition]] = []
    for event in claim(cursor, LEDGER_CONSUMER, events):
        transition = LEDGER_TRANSITIONS.get(event.event_type)
        if transition is None:
            results[event.event_id] = APPLIED
        else:
            entries.append((event, transition))
    if entries:
        results.update(_ensure_ledger_entries(cursor, entries))
    return outcomes_in_order(events, results)


BALANCE_UPSERTS: dict[str, str] = {
    EVENT_AUTHORIZED: (
        "INSERT INTO merchant_balance (merchant_id, currency, authorized_total, updated_at)"
        " VALUES (%s, %s, %s, UTC_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE"
        " authorized_total = authorized_total + VALUES(authorized_total), updated_at = VALUES(updated_at)"
    ),
    EVENT_CAPTURED: (
        "INSERT INTO merchant_balance (merchant_id, currency, captured_total, updated_at)"
        " VALUES (%s, %s, %s, UTC_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE"
        " captured_total = captured_total + VALUES(captured_total), updated_at = VALUES(updated_at)"
    ),
    EVENT_REFUNDED: (
        "INSERT INTO merchant_balance (merchant_id, currency, refunded_total, updated_at)"
        " VALUES (%s, %s, %s, UTC_TIMESTAMP(3)) ON DUPLICATE KEY UPDATE"
        " refunded_total = refunded_total + VALUES(refunded_total), updated_at = VALUES(updated_at)"
    ),
}


def balance_effect(cursor: Cursor, events: Sequence[ConsumedEvent]) -> list[str]:
    """The projection's effect in the caller's transaction: add each new event's amount.

    Amounts are summed per (merchant, currency, kind) first: one upsert per group,
    in a fixed order so that concurrent batches lock the balance rows in the same
    order (no deadlock between two of them).
    """
    fresh = claim(cursor, BALANCE_CONSUMER, events)
    totals: dict[tuple[str, str, str], int] = {}
    for event in fresh:
        group = (event.event_type, event.merchant_id, event.currency)
        totals[group] = totals.get(group, 0) + event.amount
    for (event_type, merchant_id, currency), amount in sorted(totals.items()):
        cursor.execute(BALANCE_UPSERTS[event_type], (merchant_id, currency, amount))
    return outcomes_in_order(events, {event.event_id: APPLIED for event in fresh})


Effect = Callable[[Cursor, Sequence[ConsumedEvent]], list[str]]


def apply_one(database: Database, effect: Effect, event: ConsumedEvent) -> str:
    """One event in its own transaction (the per-record path; a foreign key miss is the record's fault)."""
    try:
        return database.run_in_transaction(lambda cursor: effect(cursor, [event])[0])
    except pymysql.err.IntegrityError as exc:
        if error_number(exc) == FOREIGN_KEY_MISSING:
            raise PaymentNotFound(f"payment {event.payment_id} does not exist") from None
        raise


def apply_ledger(database: Database, event: ConsumedEvent) -> str:
    return apply_one(database, ledger_effect, event)


def apply_balance(database: Database, event: ConsumedEvent) -> str:
    return apply_one(database, balance_effect, event)


def _failure(record: KafkaEventRecord, exc: Exception) -> dict[str, Any]:
    error_type = exc.error_type if isinstance(exc, RecordError) else type(exc).__name__
    log.warning("record %s-%s@%s failed: %s: %s", record.topic, record.partition, record.offset,
                error_type, exc)
    return {
        "itemIdentifier": {"partition": f"{record.topic}-{record.partition}", "offset": record.offset},
        "errorType": error_type,
        "errorMessage": str(exc)[:MAX_ERROR_MESSAGE],
    }


def process_kafka_batch(event: dict[str, Any], database: Database, effect: Effect) -> dict[str, Any]:
    """Apply every record of a Lambda Kafka event; the partial batch response for the rest.

    Fast path: every decodable record's effect in ONE transaction (one commit, one
    fsync per batch instead of one per record: what lets a consumer keep up with a
    backlog). If any record's effect fails there, the transaction is rolled back and
    the records are applied one transaction each, so the failing one is reported
    alone and the others still apply. ``DependencyUnavailable`` (database down,
    deadlock retries exhausted) propagates: the whole batch is retried.
    """
    failures: list[dict[str, Any]] = []
    decoded: list[tuple[KafkaEventRecord, ConsumedEvent]] = []
    for record in KafkaEvent(event).records:
        try:
            decoded.append((record, decode_event(record.decoded_value)))
        except RecordError as exc:
            failures.append(_failure(record, exc))
    outcomes: dict[str, int] = {}
    try:
        results = database.run_in_transaction(lambda cursor: effect(cursor, [e for _, e in decoded]))
    except DependencyUnavailable:
        raise
    except Exception as exc:
        log.info("batch transaction failed (%s: %s); applying record by record", type(exc).__name__, exc)
        results = []
        for record, consumed in decoded:
            try:
                results.append(apply_one(database, effect, consumed))
            except DependencyUnavailable:
                raise
            except Exception as record_exc:
                failures.append(_failure(record, record_exc))
    for result in results:
        outcomes[result] = outcomes.get(result, 0) + 1
    return {"batchItemFailures": failures, "outcomes": outcomes}
