"""Helpers for the monitoring and MCP integration tests: handler loading and consistent test data.

Test data is written with the ``db`` fixture's connection (payuser) exactly as the
ingest service and the consumers would leave it — payment, its ledger entries,
its published outbox events and the merchant's balance projection — for a merchant
id no other test uses, dated ``age`` ago so the projection counts as settled.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pymysql
from payfn_shared.payments.domain import CAPTURE, REFUND, PaymentStatus
from payfn_shared.payments.events import EVENT_AUTHORIZED, build_event

MONITORING_DIR = Path(__file__).resolve().parents[2] / "functions" / "monitoring"

Connection = pymysql.connections.Connection


def load_monitoring_function(name: str) -> ModuleType:
    """Import ``functions/monitoring/<name>.py`` fresh, like a cold start of that function."""
    if str(MONITORING_DIR) not in sys.path:
        sys.path.insert(0, str(MONITORING_DIR))
    spec = importlib.util.spec_from_file_location(
        f"monitoring_{name}_{uuid.uuid4().hex[:8]}", MONITORING_DIR / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def new_merchant() -> str:
    return f"mon-{uuid.uuid4().hex[:12]}"


@dataclass
class SeededMerchant:
    merchant_id: str
    currency: str
    payments: dict[str, str] = field(default_factory=dict)  # status -> payment id


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def insert_payment(
    db: Connection, merchant_id: str, status: PaymentStatus, amount: int, currency: str, at: datetime
) -> str:
    """One payment with the ledger entries and published outbox events its status implies."""
    payment_id = str(uuid.uuid4())
    transitions = {
        PaymentStatus.REQUESTED: (),
        PaymentStatus.COMPLETED: (CAPTURE,),
        PaymentStatus.REFUNDED: (CAPTURE, REFUND),
    }[status]
    with db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO payment (id, merchant_id, amount, currency, status, idempotency_key, request_hash,"
            " created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (payment_id, merchant_id, amount, currency, status.value, f"k-{payment_id}", "0" * 64, at, at),
        )
        for event_type in (EVENT_AUTHORIZED, *(t.event_type for t in transitions)):
            insert_outbox_event(
                cursor, payment_id, merchant_id, event_type, status, amount, currency, at, published=True
            )
        for transition in transitions:
            cursor.execute(
                "INSERT INTO ledger_entry (payment_id, transition, debit_account, credit_account, amount,"
                " currency, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    payment_id,
                    transition.name,
                    transition.debit_account,
                    transition.credit_account,
                    amount,
                    currency,
                    at,
                ),
            )
    return payment_id


def insert_outbox_event(
    cursor: pymysql.cursors.Cursor,
    payment_id: str,
    merchant_id: str,
    event_type: str,
    status: PaymentStatus,
    amount: int,
    currency: str,
    at: datetime,
    *,
    published: bool,
    attempts: int = 1,
    last_error: str | None = None,
) -> str:
    """A real event of the payment (so a relay that picks it up publishes something true)."""
    event = build_event(
        event_type,
        payment_id=payment_id,
        merchant_id=merchant_id,
        status=status.value,
        amount=amount,
        currency=currency,
        occurred_at=at,
    )
    cursor.execute(
        "INSERT INTO outbox_event (event_id, aggregate_id, event_type, topic, partition_key, payload,"
        " created_at, published_at, attempts, last_error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            event.event_id,
            payment_id,
            event_type,
            event.topic,
            payment_id,
            event.value(),
            at,
            at if published else None,
            attempts,
            last_error,
        ),
    )
    return event.event_id


def seed_merchant(
    db: Connection,
    currency: str = "KRW",
    age: timedelta = timedelta(minutes=10),
    amounts: tuple[int, int, int] = (1000, 2000, 3000),
) -> SeededMerchant:
    """A merchant with one REQUESTED, one COMPLETED and one REFUNDED payment, fully consistent."""
    seeded = SeededMerchant(new_merchant(), currency)
    at = _now() - age
    for status, amount in zip(PaymentStatus, amounts, strict=True):
        seeded.payments[status.value] = insert_payment(db, seeded.merchant_id, status, amount, currency, at)
    requested, completed, refunded = amounts
    with db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO merchant_balance (merchant_id, currency, authorized_total, captured_total,"
            " refunded_total, updated_at) VALUES (%s, %s, %s, %s, %s, %s)",
            (
                seeded.merchant_id,
                currency,
                requested + completed + refunded,
                completed + refunded,
                refunded,
                at,
            ),
        )
    return seeded


class RowCounter:
    """Counts rows an injected statement would damage, so that a test can prove it changed nothing.

    The stack is shared with other test runs that insert (sometimes backdated) rows and
    delete their own at the same time, so global "COUNT(*) before == after" would be
    flaky. Counted instead: every row of the test's own merchant (with its statuses and
    amounts), and the rows older than an hour in the tables no test cleans up. An
    injected DELETE, UPDATE or DROP would change one or the other; concurrent tests do not.
    """

    def __init__(self, db: Connection, merchant_id: str) -> None:
        self.db = db
        self.merchant_id = merchant_id
        with db.cursor() as cursor:
            cursor.execute("SELECT UTC_TIMESTAMP(3) - INTERVAL 1 HOUR")
            self.cutoff = cursor.fetchone()[0]

    def counts(self) -> dict[str, object]:
        queries = {
            "old payment": "SELECT COUNT(*) FROM payment WHERE created_at < %(cutoff)s",
            "old ledger_entry": "SELECT COUNT(*) FROM ledger_entry WHERE created_at < %(cutoff)s",
            "old idempotency_record": "SELECT COUNT(*) FROM idempotency_record WHERE created_at < %(cutoff)s",
            "merchant payments": "SELECT GROUP_CONCAT(id, status, amount ORDER BY id) FROM payment"
            " WHERE merchant_id = %(merchant)s",
            "merchant ledger_entry": "SELECT COUNT(*) FROM ledger_entry l"
            " JOIN payment p ON p.id = l.payment_id WHERE p.merchant_id = %(merchant)s",
            "merchant outbox_event": "SELECT COUNT(*) FROM outbox_event o"
            " JOIN payment p ON p.id = o.aggregate_id WHERE p.merchant_id = %(merchant)s",
            "merchant balance": "SELECT CONCAT(authorized_total, '/', captured_total, '/', refunded_total)"
            " FROM merchant_balance WHERE merchant_id = %(merchant)s",
        }
        counts: dict[str, object] = {}
        with self.db.cursor() as cursor:
            for name, sql in queries.items():
                cursor.execute(sql, {"cutoff": self.cutoff, "merchant": self.merchant_id})
                counts[name] = cursor.fetchone()[0]
        return counts
