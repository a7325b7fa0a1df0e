"""The payment state machine and its ledger rules, free of I/O.

``REQUESTED → COMPLETED → REFUNDED``. Each transition after authorization writes
exactly one double-entry ledger line; the rules below are the only place that
says which accounts move, so the repository, the API body and the events agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from payfn_shared.payments.events import EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_REFUNDED, iso_millis
from payfn_shared.platform.errors import ApiError, CaptureConflict, RefundConflict

MERCHANT_RECEIVABLE = "merchant_receivable"
CASH = "cash"


class PaymentStatus(StrEnum):
    REQUESTED = "REQUESTED"
    COMPLETED = "COMPLETED"
    REFUNDED = "REFUNDED"


@dataclass(frozen=True)
class Transition:
    """One move of the state machine with the ledger line and event it produces."""

    name: str
    source: PaymentStatus
    target: PaymentStatus
    debit_account: str
    credit_account: str
    event_type: str
    conflict: type[ApiError]
    verb: str
    message: str


CAPTURE = Transition(
    "CAPTURE", PaymentStatus.REQUESTED, PaymentStatus.COMPLETED, MERCHANT_RECEIVABLE, CASH,
    EVENT_CAPTURED, CaptureConflict, "captured", "Payment captured",
)
REFUND = Transition(
    "REFUND", PaymentStatus.COMPLETED, PaymentStatus.REFUNDED, CASH, MERCHANT_RECEIVABLE,
    EVENT_REFUNDED, RefundConflict, "refunded", "Payment refunded",
)
AUTHORIZE_EVENT = EVENT_AUTHORIZED
AUTHORIZE_MESSAGE = "Payment authorized"
FOUND_MESSAGE = "Payment found"


@dataclass(frozen=True)
class Payment:
    id: str
    merchant_id: str
    amount: int
    currency: str
    status: PaymentStatus
    idempotency_key: str
    request_hash: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class LedgerEntry:
    transition: str
    debit_account: str
    credit_account: str
    amount: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "debitAccount": self.debit_account,
            "creditAccount": self.credit_account,
            "amount": self.amount,
        }


def check_transition(payment: Payment, transition: Transition) -> None:
    """Raise the transition's 409 if the payment is not in its source state."""
    if payment.status is not transition.source:
        raise transition.conflict(
            f"Payment is {payment.status.value}; only {transition.source.value} payments can be "
            f"{transition.verb}",
            payment_id=payment.id,
        )


def ledger_entry_for(payment: Payment, transition: Transition) -> LedgerEntry:
    return LedgerEntry(transition.name, transition.debit_account, transition.credit_account, payment.amount)


def payment_body(payment: Payment, entries: list[LedgerEntry], message: str) -> dict[str, Any]:
    """The spec's response body."""
    return {
        "paymentId": payment.id,
        "status": payment.status.value,
        "amount": payment.amount,
        "currency": payment.currency,
        "createdAt": iso_millis(payment.created_at),
        "ledgerEntries": [entry.to_dict() for entry in entries],
        "message": message,
    }
