"""Reconciliation rules: payment state vs ledger vs outbox vs the merchant_balance projection.

Pure functions over plain rows, so the rules are unit-tested on in-memory data
and the SQL side (:mod:`payfn_shared.monitoring.database`) only fetches. The
expected ledger entries and outbox events of each status come from the state
machine in :mod:`payfn_shared.payments.domain`; a projection difference for a
merchant active in the last ``grace_seconds`` is *lagging*, not an imbalance.

What "balanced" means, per payment and per merchant: docs/PAYMENTS.md#reconciliation-rules
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from payfn_shared.payments.domain import CAPTURE, REFUND, PaymentStatus, Transition
from payfn_shared.payments.events import EVENT_AUTHORIZED

#: The transitions a payment in a status has gone through, in order.
TRANSITIONS_BY_STATUS: dict[PaymentStatus, tuple[Transition, ...]] = {
    PaymentStatus.REQUESTED: (),
    PaymentStatus.COMPLETED: (CAPTURE,),
    PaymentStatus.REFUNDED: (CAPTURE, REFUND),
}
PROJECTION_FIELDS = ("authorized_total", "captured_total", "refunded_total")


@dataclass(frozen=True)
class PaymentRow:
    id: str
    merchant_id: str
    status: str
    amount: int
    currency: str


@dataclass(frozen=True)
class LedgerRow:
    payment_id: str
    transition: str
    debit_account: str
    credit_account: str
    amount: int
    currency: str


@dataclass(frozen=True)
class OutboxRow:
    aggregate_id: str
    event_type: str


@dataclass
class PaymentIssue:
    payment_id: str
    merchant_id: str
    status: str
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "paymentId": self.payment_id,
            "merchantId": self.merchant_id,
            "status": self.status,
            "problems": self.problems,
        }


def expected_events(status: PaymentStatus) -> list[str]:
    return [EVENT_AUTHORIZED, *(t.event_type for t in TRANSITIONS_BY_STATUS[status])]


def check_payment(payment: PaymentRow, entries: Iterable[LedgerRow], events: Iterable[str]) -> list[str]:
    """Every way one payment disagrees with its ledger entries and outbox events (empty: fine)."""
    try:
        status = PaymentStatus(payment.status)
    except ValueError:
        return [f"unknown status {payment.status!r}"]
    problems: list[str] = []
    expected = {t.name: t for t in TRANSITIONS_BY_STATUS[status]}
    seen: Counter[str] = Counter()
    for entry in entries:
        seen[entry.transition] += 1
        transition = expected.get(entry.transition)
        if transition is None:
            problems.append(f"unexpected {entry.transition} ledger entry for a {status.value} payment")
            continue
        if (entry.debit_account, entry.credit_account) != (
            transition.debit_account,
            transition.credit_account,
        ):
            problems.append(
                f"{entry.transition} entry moves {entry.debit_account} -> {entry.credit_account},"
                f" expected {transition.debit_account} -> {transition.credit_account}"
            )
        if entry.amount != payment.amount:
            problems.append(
                f"{entry.transition} entry amount {entry.amount} != payment amount {payment.amount}"
            )
        if entry.currency != payment.currency:
            problems.append(f"{entry.transition} entry currency {entry.currency} != {payment.currency}")
    for name in expected:
        if seen[name] == 0:
            problems.append(f"missing {name} ledger entry")
    problems += [f"{count} {name} ledger entries" for name, count in seen.items() if count > 1]
    event_counts = Counter(events)
    for event_type in expected_events(status):
        if event_counts[event_type] == 0:
            problems.append(f"missing {event_type} outbox event")
    for event_type, count in sorted(event_counts.items()):
        if event_type not in expected_events(status):
            problems.append(f"unexpected {event_type} outbox event for a {status.value} payment")
        elif count > 1:
            problems.append(f"{count} {event_type} outbox events")
    return problems


@dataclass(frozen=True)
class StatusTotal:
    """Σ amount of one merchant's payments in one currency and status (a GROUP BY row)."""

    merchant_id: str
    currency: str
    status: str
    amount: int
    last_activity: datetime


@dataclass
class ExpectedProjection:
    totals: dict[str, int]
    last_activity: datetime


def expected_projection(groups: Iterable[StatusTotal]) -> dict[tuple[str, str], ExpectedProjection]:
    """Projection totals per (merchant, currency) as the payments table says they must be."""
    expected: dict[tuple[str, str], ExpectedProjection] = {}
    for group in groups:
        key = (group.merchant_id, group.currency)
        row = expected.get(key)
        if row is None:
            row = expected[key] = ExpectedProjection(dict.fromkeys(PROJECTION_FIELDS, 0), group.last_activity)
        row.last_activity = max(row.last_activity, group.last_activity)
        row.totals["authorized_total"] += group.amount
        if group.status in (PaymentStatus.COMPLETED, PaymentStatus.REFUNDED):
            row.totals["captured_total"] += group.amount
        if group.status == PaymentStatus.REFUNDED:
            row.totals["refunded_total"] += group.amount
    return expected


@dataclass(frozen=True)
class Reconciliation:
    """The verdict; ``balanced`` is False as soon as one payment or one settled projection disagrees."""

    checked_payments: int
    checked_merchants: int
    payment_issues: list[PaymentIssue]
    projection_issues: list[dict[str, Any]]
    lagging_projections: list[dict[str, Any]]

    @property
    def balanced(self) -> bool:
        return not self.payment_issues and not self.projection_issues


def reconcile(
    payments: Iterable[PaymentRow],
    ledger: Iterable[LedgerRow],
    outbox: Iterable[OutboxRow],
    status_totals: Iterable[StatusTotal],
    projections: Mapping[tuple[str, str], Mapping[str, int]],
    now: datetime,
    grace_seconds: int,
) -> Reconciliation:
    """Check every payment against its entries and events, then every projection row.

    ``status_totals`` covers every payment in scope even when ``payments`` was
    capped, so the projection verdict never depends on the row cap.
    """
    entries_by_payment: dict[str, list[LedgerRow]] = defaultdict(list)
    for entry in ledger:
        entries_by_payment[entry.payment_id].append(entry)
    events_by_payment: dict[str, list[str]] = defaultdict(list)
    for event in outbox:
        events_by_payment[event.aggregate_id].append(event.event_type)

    checked = 0
    issues = []
    for payment in payments:
        checked += 1
        problems = check_payment(
            payment, entries_by_payment.get(payment.id, ()), events_by_payment.get(payment.id, ())
        )
        if problems:
            issues.append(PaymentIssue(payment.id, payment.merchant_id, payment.status, problems))

    settled_before = now - timedelta(seconds=grace_seconds)
    projection_issues, lagging = [], []
    expected = expected_projection(status_totals)
    zero = dict.fromkeys(PROJECTION_FIELDS, 0)
    for key in sorted(set(expected) | set(projections)):
        merchant_id, currency = key
        want = expected[key].totals if key in expected else zero
        actual = projections.get(key)
        have = {name: int(actual[name]) for name in PROJECTION_FIELDS} if actual is not None else None
        if have == want or (have is None and want == zero):
            continue
        difference = {"merchantId": merchant_id, "currency": currency, "expected": want, "actual": have}
        if key in expected and expected[key].last_activity > settled_before:
            lagging.append(difference)
        else:
            projection_issues.append(difference)
    merchants = {merchant for merchant, _ in expected}
    return Reconciliation(checked, len(merchants), issues, projection_issues, lagging)
