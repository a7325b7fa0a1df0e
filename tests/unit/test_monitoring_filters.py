"""The natural-language payment filter: grammar, time windows, limits, and SQL that never changes."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from payfn_shared.monitoring.filters import (
    PAYMENTS_SQL,
    PaymentFilter,
    capped_limit,
    parse_filter,
    parse_time_range,
    payments_query,
)
from payfn_shared.payments.domain import PaymentStatus
from payfn_shared.platform.errors import ValidationFailed

NOW = datetime(2026, 3, 14, 15, 9, 26, 535000)
MIDNIGHT = datetime(2026, 3, 14)


def test_a_sentence_becomes_typed_values() -> None:
    parsed = parse_filter("show completed payments for merchant M-1 in the last hour over 50000", NOW)
    assert parsed == PaymentFilter(
        statuses=(PaymentStatus.COMPLETED,),
        merchant_id="M-1",
        created_from=NOW - timedelta(hours=1),
        amount_over=50000,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", PaymentFilter()),
        ("refunded, requested", PaymentFilter(statuses=(PaymentStatus.REFUNDED, PaymentStatus.REQUESTED))),
        ("captured succeeded", PaymentFilter(statuses=(PaymentStatus.COMPLETED,))),
        ("merchant=abc_9", PaymentFilter(merchant_id="abc_9")),
        ("merchant:abc", PaymentFilter(merchant_id="abc")),
        ("today", PaymentFilter(created_from=MIDNIGHT)),
        ("yesterday", PaymentFilter(created_from=MIDNIGHT - timedelta(days=1), created_to=MIDNIGHT)),
        ("last 24h", PaymentFilter(created_from=NOW - timedelta(hours=24))),
        ("past 3 days", PaymentFilter(created_from=NOW - timedelta(days=3))),
        ("last 30 minutes", PaymentFilter(created_from=NOW - timedelta(minutes=30))),
        ("last week", PaymentFilter(created_from=NOW - timedelta(days=7))),
        ("more than 10 less than 20", PaymentFilter(amount_over=10, amount_under=20)),
        (">100 <200", PaymentFilter(amount_over=100, amount_under=200)),
        ("under 5 KRW", PaymentFilter(amount_under=5, currency="KRW")),
        ("failed last hour", PaymentFilter(failed_publish=True, created_from=NOW - timedelta(hours=1))),
        (
            "payment 0B1C2D3E-0000-4000-8000-000000000001",
            PaymentFilter(payment_id="0b1c2d3e-0000-4000-8000-000000000001"),
        ),
    ],
)
def test_grammar(text: str, expected: PaymentFilter) -> None:
    assert parse_filter(text, NOW) == expected


@pytest.mark.parametrize(
    "text",
    [
        "refundd",  # a typo must not silently mean "every payment"
        "krw",  # currencies are upper case only ("top", "try" are words, not money)
        "merchant",  # a merchant id is missing
        "over lots",
        "over 1234567890123456789",
        "last 400 days",
        "last 5 fortnights",
        "x" * 201,
    ],
)
def test_unknown_or_malformed_words_are_refused(text: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_filter(text, NOW)
    assert caught.value.status == 400
    assert caught.value.errors[0].field == "filter"


INJECTIONS = [
    "' OR 1=1 --",
    "completed' OR '1'='1",
    "completed OR 1=1",
    "merchant M1' OR '1'='1",
    "merchant M1;DROP TABLE payment",
    "1; DELETE FROM payment",
    "completed UNION SELECT * FROM ledger_entry",
    "merchant x\\' --",
    "completed) OR (1=1",
    "over 1 OR 1=1",
    "merchant=M1%27--",
    "KRW'; UPDATE payment SET status='REFUNDED",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_sql_looking_input_is_refused_before_any_sql(text: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_filter(text, NOW)


ACCEPTED = ["", "completed merchant M1 last hour over 50000", "refunded requested KRW under 9", "failed"]


@pytest.mark.parametrize("text", ACCEPTED)
def test_the_sql_text_is_the_same_constant_for_every_filter(text: str) -> None:
    sql, params = payments_query(parse_filter(text, NOW), 20)
    assert sql is PAYMENTS_SQL
    placeholders = {
        "any_status",
        "status_1",
        "status_2",
        "status_3",
        "merchant_id",
        "payment_id",
        "currency",
        "created_from",
        "created_to",
        "amount_over",
        "amount_under",
        "failed_publish",
        "limit",
    }
    assert set(params) == placeholders
    assert all(f"%({name})s" in PAYMENTS_SQL for name in placeholders)


def test_filter_values_only_travel_as_parameters() -> None:
    parsed = parse_filter("merchant Robert_-_Tables completed refunded", NOW)
    sql, params = payments_query(parsed, 7)
    assert "Robert" not in sql
    assert params["merchant_id"] == "Robert_-_Tables"
    assert (params["any_status"], params["status_1"], params["status_2"], params["status_3"]) == (
        False,
        "COMPLETED",
        "REFUNDED",
        "REFUNDED",
    )
    assert params["limit"] == 7


def test_no_status_word_means_any_status() -> None:
    _, params = payments_query(parse_filter("merchant M1", NOW), 1)
    assert params["any_status"] is True


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 20), ("", 20), ("1", 1), ("100", 100), (55, 55), (" 3 ", 3)]
)
def test_limit_defaults_and_cap(raw: str | int | None, expected: int) -> None:
    assert capped_limit(raw, 20, 100) == expected


@pytest.mark.parametrize("raw", ["0", "101", "-1", "abc", "1e3", 1000])
def test_limit_out_of_range_is_refused(raw: str | int) -> None:
    with pytest.raises(ValidationFailed) as caught:
        capped_limit(raw, 20, 100)
    assert caught.value.errors[0].field == "limit"


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        (None, NOW - timedelta(hours=24), None),
        ("1h", NOW - timedelta(hours=1), None),
        ("7d", NOW - timedelta(days=7), None),
        ("last hour", NOW - timedelta(hours=1), None),
        ("today", MIDNIGHT, None),
        ("all", None, None),
    ],
)
def test_time_ranges(text: str | None, start: datetime | None, end: datetime | None) -> None:
    window = parse_time_range(text, NOW)
    assert (window.start, window.end) == (start, end)


@pytest.mark.parametrize("text", ["forever", "0h", "367d", "1 parsec", "1h; DROP TABLE payment"])
def test_bad_time_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_time_range(text, NOW)
    assert caught.value.errors[0].field == "timeRange"
