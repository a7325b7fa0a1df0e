"""Reconciliation rules on in-memory rows: what balanced means, and every way to be unbalanced."""

from __future__ import annotations

from datetime import datetime, timedelta

from payfn_shared.monitoring.reconciliation import (
    LedgerRow,
    OutboxRow,
    PaymentRow,
    Reconciliation,
    StatusTotal,
    check_payment,
    expected_projection,
    reconcile,
)
from payfn_shared.payments.events import EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_REFUNDED

NOW = datetime(2026, 3, 14, 12, 0, 0)
OLD = NOW - timedelta(minutes=10)
RECV, CASH = "merchant_receivable", "cash"


def capture(payment_id: str, amount: int, currency: str = "KRW") -> LedgerRow:
    return LedgerRow(payment_id, "CAPTURE", RECV, CASH, amount, currency)


def refund(payment_id: str, amount: int, currency: str = "KRW") -> LedgerRow:
    return LedgerRow(payment_id, "REFUND", CASH, RECV, amount, currency)


def events(payment_id: str, *types: str) -> list[OutboxRow]:
    return [OutboxRow(payment_id, event_type) for event_type in types]


PAYMENTS = [
    PaymentRow("p-req", "M1", "REQUESTED", 100, "KRW"),
    PaymentRow("p-com", "M1", "COMPLETED", 200, "KRW"),
    PaymentRow("p-ref", "M1", "REFUNDED", 300, "KRW"),
]
LEDGER = [capture("p-com", 200), capture("p-ref", 300), refund("p-ref", 300)]
OUTBOX = [
    *events("p-req", EVENT_AUTHORIZED),
    *events("p-com", EVENT_AUTHORIZED, EVENT_CAPTURED),
    *events("p-ref", EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_REFUNDED),
]
TOTALS = [
    StatusTotal("M1", "KRW", "REQUESTED", 100, OLD),
    StatusTotal("M1", "KRW", "COMPLETED", 200, OLD),
    StatusTotal("M1", "KRW", "REFUNDED", 300, OLD),
]
PROJECTION = {("M1", "KRW"): {"authorized_total": 600, "captured_total": 500, "refunded_total": 300}}


def run(
    ledger: list[LedgerRow] = LEDGER,
    outbox: list[OutboxRow] = OUTBOX,
    projection: dict[tuple[str, str], dict[str, int]] = PROJECTION,
    totals: list[StatusTotal] = TOTALS,
) -> Reconciliation:
    return reconcile(PAYMENTS, ledger, outbox, totals, projection, NOW, grace_seconds=60)


def test_clean_data_is_balanced() -> None:
    result = run()
    assert result.balanced
    assert (result.checked_payments, result.checked_merchants) == (3, 1)
    assert result.payment_issues == result.projection_issues == result.lagging_projections == []


def test_projection_totals_follow_the_state_machine() -> None:
    expected = expected_projection(TOTALS)
    assert expected[("M1", "KRW")].totals == PROJECTION[("M1", "KRW")]


def test_a_ledger_entry_on_a_requested_payment_is_named() -> None:
    result = run(ledger=[*LEDGER, capture("p-req", 100)])
    assert not result.balanced
    assert [issue.payment_id for issue in result.payment_issues] == ["p-req"]
    assert "unexpected CAPTURE ledger entry" in result.payment_issues[0].problems[0]


def test_missing_capture_entry() -> None:
    result = run(ledger=[capture("p-ref", 300), refund("p-ref", 300)])
    assert [i.payment_id for i in result.payment_issues] == ["p-com"]
    assert result.payment_issues[0].problems == ["missing CAPTURE ledger entry"]


def test_missing_refund_entry_on_a_refunded_payment() -> None:
    all_events = [EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_REFUNDED]
    problems = check_payment(PAYMENTS[2], [capture("p-ref", 300)], all_events)
    assert problems == ["missing REFUND ledger entry"]


def test_amount_currency_and_direction_must_match() -> None:
    wrong = [LedgerRow("p-com", "CAPTURE", CASH, RECV, 199, "USD")]
    problems = check_payment(PAYMENTS[1], wrong, [EVENT_AUTHORIZED, EVENT_CAPTURED])
    assert len(problems) == 3
    assert any("moves cash -> merchant_receivable" in p for p in problems)
    assert any("amount 199 != payment amount 200" in p for p in problems)
    assert any("currency USD != KRW" in p for p in problems)


def test_duplicate_entries_and_events_are_reported() -> None:
    problems = check_payment(
        PAYMENTS[1],
        [capture("p-com", 200), capture("p-com", 200)],
        [EVENT_AUTHORIZED, EVENT_CAPTURED, EVENT_CAPTURED],
    )
    assert "2 CAPTURE ledger entries" in problems
    assert f"2 {EVENT_CAPTURED} outbox events" in problems


def test_every_transition_needs_its_outbox_event() -> None:
    kept = [e for e in OUTBOX if not (e.aggregate_id == "p-ref" and e.event_type == EVENT_REFUNDED)]
    result = run(outbox=kept)
    assert [i.payment_id for i in result.payment_issues] == ["p-ref"]
    assert result.payment_issues[0].problems == [f"missing {EVENT_REFUNDED} outbox event"]


def test_an_event_ahead_of_the_status_is_reported() -> None:
    problems = check_payment(PAYMENTS[0], [], [EVENT_AUTHORIZED, EVENT_CAPTURED])
    assert problems == [f"unexpected {EVENT_CAPTURED} outbox event for a REQUESTED payment"]


def test_unknown_status() -> None:
    assert check_payment(PaymentRow("x", "M1", "FAILED", 1, "KRW"), [], []) == ["unknown status 'FAILED'"]


def test_a_settled_wrong_projection_is_an_imbalance() -> None:
    wrong = {("M1", "KRW"): {"authorized_total": 600, "captured_total": 501, "refunded_total": 300}}
    result = run(projection=wrong)
    assert not result.balanced
    assert result.payment_issues == []
    assert result.projection_issues == [
        {
            "merchantId": "M1",
            "currency": "KRW",
            "expected": PROJECTION[("M1", "KRW")],
            "actual": wrong[("M1", "KRW")],
        }
    ]


def test_a_missing_projection_row_is_an_imbalance() -> None:
    result = run(projection={})
    assert not result.balanced
    assert result.projection_issues[0]["actual"] is None


def test_a_projection_still_catching_up_is_lagging_not_unbalanced() -> None:
    just_now = NOW - timedelta(seconds=5)
    recent = [StatusTotal(t.merchant_id, t.currency, t.status, t.amount, just_now) for t in TOTALS]
    result = run(projection={}, totals=recent)
    assert result.balanced
    assert [lag["merchantId"] for lag in result.lagging_projections] == ["M1"]


def test_a_projection_without_payments_is_an_imbalance() -> None:
    ghost_row = {"authorized_total": 5, "captured_total": 0, "refunded_total": 0}
    ghost = {**PROJECTION, ("GHOST", "EUR"): ghost_row}
    result = run(projection=ghost)
    assert [issue["merchantId"] for issue in result.projection_issues] == ["GHOST"]
