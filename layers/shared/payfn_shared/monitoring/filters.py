"""Natural-language payment filters → a typed filter → parameters of ONE constant SQL query.

Why a tiny grammar instead of free text search: the monitoring API and the MCP
``query_payments`` tool accept what a person types ("completed merchant M1 last
hour over 50000"), and that text must never reach SQL. The parser turns it into
:class:`PaymentFilter` (typed values only); :func:`payments_query` then returns
:data:`PAYMENTS_SQL` — the same constant text for every filter, each optional
condition ``(%(x)s IS NULL OR column = %(x)s)`` so the indexes still apply — and
a parameter dict. Any unknown word is rejected with 400 ``VALIDATION_FAILED``: a
filter that silently ignored "refundd" would show every payment.

The grammar (status, merchant, time, amount, currency, id words): docs/PAYMENTS.md#payment-filters
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from payfn_shared.payments.currencies import ISO_4217_CODES
from payfn_shared.payments.domain import PaymentStatus
from payfn_shared.payments.validation import MERCHANT_ID_RE
from payfn_shared.platform.errors import FieldError, ValidationFailed
from payfn_shared.platform.numbers import parse_decimal

MAX_FILTER_LENGTH = 200
MAX_WINDOW = timedelta(days=366)

STATUS_WORDS: dict[str, PaymentStatus] = {
    "requested": PaymentStatus.REQUESTED,
    "authorized": PaymentStatus.REQUESTED,
    "pending": PaymentStatus.REQUESTED,
    "completed": PaymentStatus.COMPLETED,
    "captured": PaymentStatus.COMPLETED,
    "succeeded": PaymentStatus.COMPLETED,
    "successful": PaymentStatus.COMPLETED,
    "refunded": PaymentStatus.REFUNDED,
}
FAILED_WORDS = frozenset({"failed", "failure", "failures"})
FILLER_WORDS = frozenset(
    {
        "show",
        "list",
        "find",
        "get",
        "me",
        "all",
        "the",
        "payments",
        "payment",
        "and",
        "with",
        "in",
        "of",
        "for",
        "from",
        "status",
        "that",
        "are",
        "were",
        "is",
        "than",
        "amount",
        "created",
    }
)
MERCHANT_WORDS = frozenset({"merchant", "merchantid", "merchant_id"})
OVER_WORDS = frozenset({"over", "above", ">", "more", "greater"})
UNDER_WORDS = frozenset({"under", "below", "<", "less"})
RECENT_WORDS = frozenset({"last", "past"})
UNIT_SECONDS: dict[str, int] = {
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86_400),
    **dict.fromkeys(("w", "week", "weeks"), 604_800),
}
_COMPACT_DURATION = re.compile(r"([0-9]{1,6})([a-z]+)")
_TOKEN = re.compile(r"[^\s,]+")
_OPERATOR = re.compile(r"(>|<)([0-9]+)")


@dataclass(frozen=True)
class PaymentFilter:
    """What a filter text means, in typed values only (nothing here is SQL)."""

    statuses: tuple[PaymentStatus, ...] = ()
    merchant_id: str | None = None
    payment_id: str | None = None
    currency: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    amount_over: int | None = None
    amount_under: int | None = None
    failed_publish: bool = False

    def describe(self) -> dict[str, Any]:
        """The normalized filter, echoed in answers so a person sees how the text was read."""
        return {
            "statuses": [status.value for status in self.statuses],
            "merchantId": self.merchant_id,
            "paymentId": self.payment_id,
            "currency": self.currency,
            "createdFrom": self.created_from.isoformat() if self.created_from else None,
            "createdTo": self.created_to.isoformat() if self.created_to else None,
            "amountOver": self.amount_over,
            "amountUnder": self.amount_under,
            "failedPublish": self.failed_publish,
        }


@dataclass(frozen=True)
class TimeWindow:
    """A half-open ``[start, end)`` creation-time window; None means unbounded."""

    start: datetime | None
    end: datetime | None
    label: str


def _reject(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"Invalid {field}", errors=[FieldError(field, message)])


def _duration(amount: int, unit: str, field: str) -> timedelta:
    seconds = UNIT_SECONDS.get(unit)
    if seconds is None:
        raise _reject(field, f"unknown time unit {unit!r} (use minutes, hours, days or weeks)")
    window = timedelta(seconds=amount * seconds)
    if not timedelta(0) < window <= MAX_WINDOW:
        raise _reject(field, "the window must be between 1 minute and 366 days")
    return window


def parse_time_range(
    text: str | None, now: datetime, default: str = "24h", field: str = "timeRange"
) -> TimeWindow:
    """``24h`` / ``30m`` / ``7d`` / ``today`` / ``yesterday`` / ``last hour`` / ``last 3 days`` / ``all``.

    Shared by ``statistics?timeRange=`` and the payment filter, so both read time the same way.
    """
    words = (text or default).strip().lower().split()
    if len(words) > 1 and words[0] in RECENT_WORDS:
        words = words[1:]
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if words == ["all"]:
        return TimeWindow(None, None, "all")
    if words == ["today"]:
        return TimeWindow(midnight, None, "today")
    if words == ["yesterday"]:
        return TimeWindow(midnight - timedelta(days=1), midnight, "yesterday")
    if len(words) == 1 and words[0] in UNIT_SECONDS:
        words = ["1", words[0]]
    if len(words) == 2 and (count := parse_decimal(words[0], 6)) is not None:
        window = _duration(count, words[1], field)
    elif len(words) == 1 and (match := _COMPACT_DURATION.fullmatch(words[0])):
        window = _duration(int(match.group(1)), match.group(2), field)
    else:
        raise _reject(field, f"{text!r} is not a time range (e.g. 1h, 24h, 7d, today, yesterday, all)")
    return TimeWindow(now - window, None, "last " + " ".join(words))


def _tokens(text: str) -> list[str]:
    """Split on spaces/commas; ``merchant=X``, ``merchant:X`` and ``>5000`` become two tokens."""
    tokens: list[str] = []
    for raw in _TOKEN.findall(text):
        key, sep, value = raw.partition("=") if "=" in raw else raw.partition(":")
        if sep and key.lower() in MERCHANT_WORDS:
            tokens += [key, value]
        elif match := _OPERATOR.fullmatch(raw):
            tokens += [match.group(1), match.group(2)]
        else:
            tokens.append(raw)
    return tokens


class _Reader:
    """A cursor over the tokens with the errors the grammar reports."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.index = 0

    def next(self, what: str) -> str:
        if self.index >= len(self.tokens):
            raise _reject("filter", f"expected {what} at the end of the filter")
        token = self.tokens[self.index]
        self.index += 1
        return token

    def peek(self) -> str | None:
        return self.tokens[self.index].lower() if self.index < len(self.tokens) else None

    def amount(self, word: str) -> int:
        if self.peek() == "than":
            self.index += 1
        token = self.next(f"an amount after {word!r}")
        amount = parse_decimal(token)
        if amount is None:
            raise _reject("filter", f"{token!r} after {word!r} is not an amount in minor units")
        return amount


def parse_filter(text: str | None, now: datetime) -> PaymentFilter:
    """Read a filter text (grammar in the module docstring); raises ValidationFailed (400)."""
    text = (text or "").strip()
    if len(text) > MAX_FILTER_LENGTH:
        raise _reject("filter", f"at most {MAX_FILTER_LENGTH} characters")
    reader = _Reader(_tokens(text))
    statuses: list[PaymentStatus] = []
    values: dict[str, Any] = {}
    while (word := reader.peek()) is not None:
        token = reader.next("a word")
        if word in FILLER_WORDS:
            continue
        if word in STATUS_WORDS:
            if STATUS_WORDS[word] not in statuses:
                statuses.append(STATUS_WORDS[word])
        elif word in FAILED_WORDS:
            values["failed_publish"] = True
        elif word in MERCHANT_WORDS:
            merchant = reader.next("a merchant id after 'merchant'")
            if not MERCHANT_ID_RE.fullmatch(merchant):
                raise _reject("filter", f"{merchant!r} is not a merchant id (1-32 of A-Z a-z 0-9 _ -)")
            values["merchant_id"] = merchant
        elif word in OVER_WORDS:
            values["amount_over"] = reader.amount(token)
        elif word in UNDER_WORDS:
            values["amount_under"] = reader.amount(token)
        elif word in ("today", "yesterday") or word in RECENT_WORDS:
            phrase = word if word not in RECENT_WORDS else f"{word} {reader.next('a duration')}"
            if word in RECENT_WORDS and parse_decimal(phrase.split()[1]) is not None:
                phrase += f" {reader.next('a time unit').lower()}"
            window = parse_time_range(phrase, now, field="filter")
            values["created_from"], values["created_to"] = window.start, window.end
        elif len(token) == 3 and token.isupper() and token in ISO_4217_CODES:
            values["currency"] = token
        elif _is_uuid(token):
            values["payment_id"] = token.lower()
        else:
            raise _reject("filter", f"unknown word {token[:40]!r}; see the filter grammar in the docs")
    return PaymentFilter(statuses=tuple(statuses), **values)


def _is_uuid(token: str) -> bool:
    if len(token) != 36:
        return False
    try:
        uuid.UUID(token)
    except ValueError:
        return False
    return True


#: The only SQL text ``query_payments`` ever sends: every filter contributes parameters only.
PAYMENTS_SQL = (
    "SELECT p.id, p.merchant_id, p.amount, p.currency, p.status, p.created_at, p.updated_at"
    " FROM payment p"
    " WHERE (%(any_status)s OR p.status IN (%(status_1)s, %(status_2)s, %(status_3)s))"
    " AND (%(merchant_id)s IS NULL OR p.merchant_id = %(merchant_id)s)"
    " AND (%(payment_id)s IS NULL OR p.id = %(payment_id)s)"
    " AND (%(currency)s IS NULL OR p.currency = %(currency)s)"
    " AND (%(created_from)s IS NULL OR p.created_at >= %(created_from)s)"
    " AND (%(created_to)s IS NULL OR p.created_at < %(created_to)s)"
    " AND (%(amount_over)s IS NULL OR p.amount > %(amount_over)s)"
    " AND (%(amount_under)s IS NULL OR p.amount < %(amount_under)s)"
    " AND (NOT %(failed_publish)s OR EXISTS (SELECT 1 FROM outbox_event o WHERE o.aggregate_id = p.id"
    " AND o.published_at IS NULL AND o.last_error IS NOT NULL))"
    " ORDER BY p.created_at DESC, p.id"
    " LIMIT %(limit)s"
)


def payments_query(payment_filter: PaymentFilter, limit: int) -> tuple[str, dict[str, Any]]:
    """:data:`PAYMENTS_SQL` and its parameters; ``limit`` must already be capped by the caller."""
    slots = [status.value for status in payment_filter.statuses] or [PaymentStatus.REQUESTED.value]
    slots += [slots[-1]] * (3 - len(slots))
    params: dict[str, Any] = {
        "any_status": not payment_filter.statuses,
        "status_1": slots[0],
        "status_2": slots[1],
        "status_3": slots[2],
        "merchant_id": payment_filter.merchant_id,
        "payment_id": payment_filter.payment_id,
        "currency": payment_filter.currency,
        "created_from": payment_filter.created_from,
        "created_to": payment_filter.created_to,
        "amount_over": payment_filter.amount_over,
        "amount_under": payment_filter.amount_under,
        "failed_publish": payment_filter.failed_publish,
        "limit": limit,
    }
    return PAYMENTS_SQL, params


def capped_limit(raw: str | int | None, default: int, maximum: int) -> int:
    """``limit`` from a query string or a tool argument: default when absent, 400 when not 1..maximum."""
    if raw is None or raw == "":
        return default
    text = str(raw).strip()
    limit = parse_decimal(text)
    if limit is None or not 1 <= limit <= maximum:
        raise _reject("limit", f"must be an integer from 1 to {maximum}")
    return limit
