"""The consumers' effects on the live MariaDB: exactly once per eventId, the ledger verified or repaired."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pymysql
import pytest
from payfn_shared.payments.consumers import (
    APPLIED,
    DUPLICATE,
    REPAIRED,
    VERIFIED,
    ConsumedEvent,
    LedgerMismatch,
    PaymentNotFound,
    apply_balance,
    apply_ledger,
    balance_effect,
    ledger_effect,
)
from payfn_shared.payments.events import EVENT_AUTHORIZED, EVENT_CAPTURED
from payfn_shared.platform.config import Settings
from payfn_shared.platform.db import Database


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    database = Database(settings)
    yield database
    database.close()


@contextmanager
def completed_payment(db: pymysql.connections.Connection) -> Iterator[ConsumedEvent]:
    """A COMPLETED payment row written without its ledger entry (as no ingest would)."""
    payment_id, merchant = str(uuid.uuid4()), f"test-{uuid.uuid4().hex[:12]}"
    with db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO payment (id, merchant_id, amount, currency, status, idempotency_key, request_hash,"
            " created_at, updated_at) VALUES (%s, %s, 500, 'EUR', 'COMPLETED', %s, %s, UTC_TIMESTAMP(3),"
            " UTC_TIMESTAMP(3))", (payment_id, merchant, payment_id, "0" * 64))
    yield ConsumedEvent(str(uuid.uuid4()), EVENT_CAPTURED, payment_id, merchant, 500, "EUR")
    with db.cursor() as cursor:
        cursor.execute("DELETE FROM ledger_entry WHERE payment_id = %s", (payment_id,))
        cursor.execute("DELETE FROM payment WHERE id = %s", (payment_id,))
        cursor.execute("DELETE FROM merchant_balance WHERE merchant_id = %s", (merchant,))


@pytest.fixture
def payment(db: pymysql.connections.Connection) -> Iterator[ConsumedEvent]:
    with completed_payment(db) as event:
        yield event


def ledger(db: pymysql.connections.Connection, payment_id: str) -> list[tuple[str, str, str, int]]:
    with db.cursor() as cursor:
        cursor.execute("SELECT transition, debit_account, credit_account, amount FROM ledger_entry"
                       " WHERE payment_id = %s", (payment_id,))
        return [(r[0], r[1], r[2], int(r[3])) for r in cursor.fetchall()]


def test_ledger_consumer_writes_a_missing_entry_once_then_only_verifies(
    database: Database, db: pymysql.connections.Connection, payment: ConsumedEvent,
) -> None:
    assert apply_ledger(database, payment) == REPAIRED
    assert ledger(db, payment.payment_id) == [("CAPTURE", "merchant_receivable", "cash", 500)]
    assert apply_ledger(database, payment) == DUPLICATE
    redelivered_by_another_path = replace(payment, event_id=str(uuid.uuid4()))
    assert apply_ledger(database, redelivered_by_another_path) == VERIFIED
    assert len(ledger(db, payment.payment_id)) == 1


def test_ledger_consumer_refuses_a_disagreeing_entry_and_unknown_payments(
    database: Database, payment: ConsumedEvent,
) -> None:
    apply_ledger(database, payment)
    with pytest.raises(LedgerMismatch):
        apply_ledger(database, replace(payment, event_id=str(uuid.uuid4()), amount=499))
    with pytest.raises(PaymentNotFound):
        apply_ledger(database, replace(payment, event_id=str(uuid.uuid4()), payment_id=str(uuid.uuid4())))


def test_balance_projection_counts_each_event_once(
    database: Database, db: pymysql.connections.Connection, payment: ConsumedEvent,
) -> None:
    authorized = replace(payment, event_type=EVENT_AUTHORIZED, event_id=str(uuid.uuid4()))
    assert apply_balance(database, authorized) == APPLIED
    assert apply_balance(database, payment) == APPLIED
    assert apply_balance(database, payment) == DUPLICATE
    assert apply_balance(database, authorized) == DUPLICATE
    with db.cursor() as cursor:
        cursor.execute("SELECT authorized_total, captured_total, refunded_total FROM merchant_balance"
                       " WHERE merchant_id = %s AND currency = 'EUR'", (payment.merchant_id,))
        assert cursor.fetchone() == (500, 500, 0)


def test_a_batch_claims_new_events_once_even_when_redelivered_with_duplicates(
    database: Database, db: pymysql.connections.Connection, payment: ConsumedEvent,
) -> None:
    events = [replace(payment, event_type=EVENT_AUTHORIZED, event_id=str(uuid.uuid4()), amount=n)
              for n in (1, 2, 3)]
    first = database.run_in_transaction(lambda cursor: balance_effect(cursor, events[:2]))
    again = database.run_in_transaction(lambda cursor: balance_effect(cursor, [*events, events[2]]))
    assert first == [APPLIED, APPLIED]
    assert again == [DUPLICATE, DUPLICATE, APPLIED, DUPLICATE]
    with db.cursor() as cursor:
        cursor.execute("SELECT authorized_total FROM merchant_balance WHERE merchant_id = %s"
                       " AND currency = 'EUR'", (payment.merchant_id,))
        assert cursor.fetchone() == (6,)


def test_a_ledger_batch_verifies_repairs_and_passes_through_in_order(
    database: Database, db: pymysql.connections.Connection, payment: ConsumedEvent,
) -> None:
    """One read serves the whole batch; each event still gets its own outcome, in order."""
    apply_ledger(database, payment)
    with completed_payment(db) as missing:
        verified = replace(payment, event_id=str(uuid.uuid4()))
        authorized = replace(missing, event_type=EVENT_AUTHORIZED, event_id=str(uuid.uuid4()))
        batch = [verified, missing, authorized, replace(missing, event_id=str(uuid.uuid4()))]
        outcomes = database.run_in_transaction(lambda cursor: ledger_effect(cursor, batch))
        assert outcomes == [VERIFIED, REPAIRED, APPLIED, VERIFIED]
        assert ledger(db, missing.payment_id) == [("CAPTURE", "merchant_receivable", "cash", 500)]
        wrong = replace(missing, event_id=str(uuid.uuid4()), amount=499)
        with pytest.raises(LedgerMismatch):
            database.run_in_transaction(lambda cursor: ledger_effect(cursor, [verified, wrong]))
