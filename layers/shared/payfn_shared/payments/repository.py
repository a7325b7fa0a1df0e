"""SQL for payments and ledger entries; every function runs in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from payfn_shared.payments.domain import LedgerEntry, Payment, PaymentStatus
from payfn_shared.platform.db import Cursor

_INSERT_PAYMENT = (
    "INSERT INTO payment (id, merchant_id, amount, currency, status, idempotency_key, request_hash,"
    " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_SELECT_BY_ID = (
    "SELECT id, merchant_id, amount, currency, status, idempotency_key, request_hash, created_at, updated_at"
    " FROM payment WHERE id = %s"
)
_SELECT_BY_ID_FOR_UPDATE = (
    "SELECT id, merchant_id, amount, currency, status, idempotency_key, request_hash, created_at, updated_at"
    " FROM payment WHERE id = %s FOR UPDATE"
)
_SELECT_BY_KEY = (
    "SELECT id, merchant_id, amount, currency, status, idempotency_key, request_hash, created_at, updated_at"
    " FROM payment WHERE merchant_id = %s AND idempotency_key = %s"
)


def _payment(row: dict[str, Any] | None) -> Payment | None:
    if row is None:
        return None
    return Payment(
        id=row["id"],
        merchant_id=row["merchant_id"],
        amount=int(row["amount"]),
        currency=row["currency"],
        status=PaymentStatus(row["status"]),
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def insert_payment(cursor: Cursor, payment: Payment) -> None:
    """Raises the driver's duplicate-key IntegrityError if merchant+key already has a payment."""
    cursor.execute(
        _INSERT_PAYMENT,
        (
            payment.id, payment.merchant_id, payment.amount, payment.currency, payment.status.value,
            payment.idempotency_key, payment.request_hash, payment.created_at, payment.updated_at,
        ),
    )


def find_payment(cursor: Cursor, payment_id: str, *, for_update: bool = False) -> Payment | None:
    """``for_update`` locks the row so concurrent transitions of one payment serialize."""
    cursor.execute(_SELECT_BY_ID_FOR_UPDATE if for_update else _SELECT_BY_ID, (payment_id,))
    return _payment(cursor.fetchone())


def find_by_idempotency_key(cursor: Cursor, merchant_id: str, key: str) -> Payment | None:
    cursor.execute(_SELECT_BY_KEY, (merchant_id, key))
    return _payment(cursor.fetchone())


def update_status(cursor: Cursor, payment_id: str, status: PaymentStatus, now: datetime) -> None:
    cursor.execute(
        "UPDATE payment SET status = %s, updated_at = %s WHERE id = %s", (status.value, now, payment_id)
    )


def insert_ledger_entry(cursor: Cursor, payment: Payment, entry: LedgerEntry, now: datetime) -> None:
    """The unique key (payment_id, transition) backs the row lock: one entry per transition."""
    cursor.execute(
        "INSERT INTO ledger_entry (payment_id, transition, debit_account, credit_account, amount, currency,"
        " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (payment.id, entry.transition, entry.debit_account, entry.credit_account, entry.amount,
         payment.currency, now),
    )


def ledger_entries(cursor: Cursor, payment_id: str) -> list[LedgerEntry]:
    cursor.execute(
        "SELECT transition, debit_account, credit_account, amount FROM ledger_entry"
        " WHERE payment_id = %s ORDER BY id",
        (payment_id,),
    )
    return [
        LedgerEntry(row["transition"], row["debit_account"], row["credit_account"], int(row["amount"]))
        for row in cursor.fetchall()
    ]
