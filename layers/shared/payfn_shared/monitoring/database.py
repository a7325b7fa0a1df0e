"""Database reports: payments, statistics, outbox, ledger, reconciliation, idempotency records.

Every query is a constant SQL text with ``%(name)s`` parameters (filters included,
see :mod:`payfn_shared.monitoring.filters`), run through
:class:`~payfn_shared.monitoring.readonly_db.ReadOnlyDatabase`, and bounded by a
LIMIT or an aggregate. Ages are computed by the database clock
(``UTC_TIMESTAMP``) so a skewed function host cannot misreport them.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from payfn_shared.monitoring.config import MonitoringConfig, load_monitoring_config
from payfn_shared.monitoring.filters import capped_limit, parse_filter, parse_time_range, payments_query
from payfn_shared.monitoring.readonly_db import ReadOnlyDatabase, get_readonly_database
from payfn_shared.monitoring.reconciliation import (
    PROJECTION_FIELDS,
    LedgerRow,
    OutboxRow,
    PaymentRow,
    StatusTotal,
    reconcile,
)
from payfn_shared.payments.domain import PaymentStatus
from payfn_shared.payments.events import iso_millis
from payfn_shared.payments.validation import IDEMPOTENCY_KEY_RE, MERCHANT_ID_RE
from payfn_shared.platform.errors import FieldError, ValidationFailed
from payfn_shared.platform.numbers import parse_decimal

MAX_OUTBOX_AGE_MINUTES = 7 * 24 * 60


def utc_now() -> datetime:
    """Naive UTC, the convention of every DATETIME column in paydb."""
    return datetime.now(UTC).replace(tzinfo=None)


def _iso(value: datetime | None) -> str | None:
    return iso_millis(value) if value is not None else None


def _merchant_param(merchant_id: str | None, field: str = "merchantId") -> str | None:
    if merchant_id in (None, ""):
        return None
    if not MERCHANT_ID_RE.fullmatch(str(merchant_id)):
        raise ValidationFailed(
            errors=[FieldError(field, "must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")]
        )
    return str(merchant_id)


class DatabaseMonitor:
    """The database side of MONITORING-SERVICE (one instance per process is enough)."""

    def __init__(
        self, database: ReadOnlyDatabase | None = None, config: MonitoringConfig | None = None
    ) -> None:
        self.config = config or load_monitoring_config()
        self.database = database or get_readonly_database()

    # -- payments ------------------------------------------------------------------------------

    def query_payments(self, filter_text: str | None, limit: str | int | None = None) -> dict[str, Any]:
        """Payments matching a natural-language filter, newest first, at most ``payments_max_limit``."""
        cap = capped_limit(limit, self.config.payments_default_limit, self.config.payments_max_limit)
        payment_filter = parse_filter(filter_text, utc_now())
        sql, params = payments_query(payment_filter, cap)
        rows = self.database.fetch_all(sql, params)
        payments = [
            {
                "paymentId": row["id"],
                "merchantId": row["merchant_id"],
                "status": row["status"],
                "amount": int(row["amount"]),
                "currency": row["currency"],
                "createdAt": _iso(row["created_at"]),
                "updatedAt": _iso(row["updated_at"]),
            }
            for row in rows
        ]
        shown = ", ".join(
            f"{p['paymentId'][:8]} {p['status']} {p['amount']} {p['currency']}" for p in payments[:5]
        )
        more = f" (+{len(payments) - 5} more)" if len(payments) > 5 else ""
        summary = f"{len(payments)} payment(s) for filter {filter_text or '(none)'!r}" + (
            f": {shown}{more}" if payments else ""
        )
        return {
            "summary": summary,
            "filter": payment_filter.describe(),
            "limit": cap,
            "count": len(payments),
            "payments": payments,
        }

    def payment_statistics(self, time_range: str | None = None) -> dict[str, Any]:
        """Counts and amount sums by status (per currency: amounts never mix currencies), and rates."""
        window = parse_time_range(time_range, utc_now())
        rows = self.database.fetch_all(
            "SELECT status, currency, COUNT(*) AS n, SUM(amount) AS total FROM payment"
            " WHERE (%(start)s IS NULL OR created_at >= %(start)s)"
            " AND (%(end)s IS NULL OR created_at < %(end)s)"
            " GROUP BY status, currency",
            {"start": window.start, "end": window.end},
        )
        by_status: dict[str, dict[str, Any]] = {
            status.value: {"count": 0, "amounts": {}} for status in PaymentStatus
        }
        for row in rows:
            entry = by_status.setdefault(row["status"], {"count": 0, "amounts": {}})
            entry["count"] += int(row["n"])
            entry["amounts"][row["currency"]] = int(row["total"])
        total = sum(entry["count"] for entry in by_status.values())
        captured = by_status["COMPLETED"]["count"] + by_status["REFUNDED"]["count"]
        rates = {
            "capturePercent": round(captured * 100.0 / total, 2) if total else None,
            "refundPercent": round(by_status["REFUNDED"]["count"] * 100.0 / captured, 2)
            if captured
            else None,
            "stillRequestedPercent": round(by_status["REQUESTED"]["count"] * 100.0 / total, 2)
            if total
            else None,
        }
        counts = ", ".join(f"{name} {entry['count']}" for name, entry in by_status.items())
        summary = f"{total} payment(s) in {window.label}: {counts}; captured {rates['capturePercent']}%"
        return {
            "summary": summary,
            "timeRange": window.label,
            "from": _iso(window.start),
            "to": _iso(window.end),
            "total": total,
            "byStatus": by_status,
            "rates": rates,
        }

    # -- outbox --------------------------------------------------------------------------------

    def outbox_status(self, max_age_minutes: str | int | None = None) -> dict[str, Any]:
        """Backlog, oldest unpublished age, and the rows stuck longer than ``max_age_minutes``."""
        minutes = _max_age(max_age_minutes)
        with self.database.snapshot() as cursor:
            cursor.execute(
                "SELECT COUNT(*) AS backlog, SUM(last_error IS NOT NULL) AS failing,"
                " TIMESTAMPDIFF(MICROSECOND, MIN(created_at), UTC_TIMESTAMP(3)) AS oldest_us"
                " FROM outbox_event WHERE published_at IS NULL"
            )
            head = cursor.fetchone()
            cursor.execute(
                "SELECT event_type, COUNT(*) AS n FROM outbox_event WHERE published_at IS NULL"
                " GROUP BY event_type"
            )
            by_type = {row["event_type"]: int(row["n"]) for row in cursor.fetchall()}
            cursor.execute(
                "SELECT COUNT(*) AS n FROM outbox_event"
                " WHERE published_at >= UTC_TIMESTAMP(3) - INTERVAL 1 HOUR"
            )
            published_last_hour = int(cursor.fetchone()["n"])
            cursor.execute(
                "SELECT id, event_id, aggregate_id, event_type, topic, attempts, last_error, created_at,"
                " TIMESTAMPDIFF(SECOND, created_at, UTC_TIMESTAMP(3)) AS age_s"
                " FROM outbox_event WHERE published_at IS NULL"
                " AND created_at < UTC_TIMESTAMP(3) - INTERVAL %(minutes)s MINUTE"
                " ORDER BY id LIMIT %(limit)s",
                {"minutes": minutes, "limit": self.config.outbox_stuck_rows},
            )
            stuck_rows = cursor.fetchall()
            cursor.execute(
                "SELECT COUNT(*) AS n FROM outbox_event WHERE published_at IS NULL"
                " AND created_at < UTC_TIMESTAMP(3) - INTERVAL %(minutes)s MINUTE",
                {"minutes": minutes},
            )
            stuck_count = int(cursor.fetchone()["n"])
        backlog = int(head["backlog"])
        oldest = round(int(head["oldest_us"]) / 1e6, 3) if head["oldest_us"] is not None else None
        stuck = [
            {
                "outboxId": int(row["id"]),
                "eventId": row["event_id"],
                "paymentId": row["aggregate_id"],
                "eventType": row["event_type"],
                "topic": row["topic"],
                "attempts": int(row["attempts"]),
                "lastError": row["last_error"],
                "createdAt": _iso(row["created_at"]),
                "ageSeconds": int(row["age_s"]),
            }
            for row in stuck_rows
        ]
        healthy = stuck_count == 0
        summary = (
            f"outbox {'OK' if healthy else 'STUCK'}: backlog {backlog}, oldest "
            f"{oldest if oldest is not None else '-'} s, {stuck_count} older than {minutes} min, "
            f"{int(head['failing'] or 0)} with a publish error, "
            f"{published_last_hour} published in the last hour"
        )
        return {
            "summary": summary,
            "healthy": healthy,
            "maxAgeMinutes": minutes,
            "backlog": backlog,
            "backlogByEventType": by_type,
            "failingRows": int(head["failing"] or 0),
            "oldestUnpublishedAgeSeconds": oldest,
            "publishedLastHour": published_last_hour,
            "stuckCount": stuck_count,
            "stuck": stuck,
        }

    # -- ledger --------------------------------------------------------------------------------

    def ledger_totals(self) -> dict[str, Any]:
        """Debits, credits and balance (debit − credit) per account and currency, entries per transition."""
        rows = self.database.fetch_all(
            "SELECT debit_account, credit_account, currency, transition, COUNT(*) AS n, SUM(amount) AS total"
            " FROM ledger_entry GROUP BY debit_account, credit_account, currency, transition"
        )
        accounts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"debits": 0, "credits": 0})
        transitions: dict[str, dict[str, Any]] = defaultdict(lambda: {"entries": 0, "amounts": {}})
        for row in rows:
            total, currency = int(row["total"]), row["currency"]
            accounts[(row["debit_account"], currency)]["debits"] += total
            accounts[(row["credit_account"], currency)]["credits"] += total
            moved = transitions[row["transition"]]
            moved["entries"] += int(row["n"])
            moved["amounts"][currency] = moved["amounts"].get(currency, 0) + total
        listed = [
            {"account": account, "currency": currency, **sums, "balance": sums["debits"] - sums["credits"]}
            for (account, currency), sums in sorted(accounts.items())
        ]
        per_currency: dict[str, int] = defaultdict(int)
        for item in listed:
            per_currency[item["currency"]] += item["balance"]
        balanced = all(value == 0 for value in per_currency.values())
        entries = sum(item["entries"] for item in transitions.values())
        shown = "; ".join(f"{a['account']} {a['currency']} {a['balance']:+d}" for a in listed[:6])
        summary = (
            f"ledger {'balanced' if balanced else 'NOT balanced'}: {entries} entries; {shown or 'empty'}"
        )
        return {
            "summary": summary,
            "balanced": balanced,
            "entries": entries,
            "accounts": listed,
            "byTransition": dict(transitions),
        }

    # -- reconciliation ------------------------------------------------------------------------

    def reconciliation(self, merchant_id: str | None = None) -> dict[str, Any]:
        """Ledger vs payment states vs merchant_balance vs outbox (rules in ``reconciliation.py``).

        One read-only snapshot, so the five reads see one consistent database state.
        Per-payment checks cover the newest ``reconciliation_max_payments`` payments
        (``truncated`` says when there were more); projection checks always cover every
        payment, as they use SQL sums. Issues are listed newest payment first.
        """
        params = {"merchant": _merchant_param(merchant_id), "cap": self.config.reconciliation_max_payments}
        with self.database.snapshot() as cursor:
            cursor.execute(
                "SELECT p.id, p.merchant_id, p.status, p.amount, p.currency FROM payment p"
                " JOIN (SELECT id FROM payment WHERE (%(merchant)s IS NULL OR merchant_id = %(merchant)s)"
                " ORDER BY created_at DESC, id LIMIT %(cap)s) s ON s.id = p.id"
                " ORDER BY p.created_at DESC, p.id",
                params,
            )
            payments = [
                PaymentRow(r["id"], r["merchant_id"], r["status"], int(r["amount"]), r["currency"])
                for r in cursor.fetchall()
            ]
            cursor.execute(
                "SELECT l.payment_id, l.transition, l.debit_account, l.credit_account, l.amount, l.currency"
                " FROM ledger_entry l"
                " JOIN (SELECT id FROM payment WHERE (%(merchant)s IS NULL OR merchant_id = %(merchant)s)"
                " ORDER BY created_at DESC, id LIMIT %(cap)s) s ON s.id = l.payment_id",
                params,
            )
            ledger = [
                LedgerRow(
                    r["payment_id"],
                    r["transition"],
                    r["debit_account"],
                    r["credit_account"],
                    int(r["amount"]),
                    r["currency"],
                )
                for r in cursor.fetchall()
            ]
            cursor.execute(
                "SELECT o.aggregate_id, o.event_type FROM outbox_event o"
                " JOIN (SELECT id FROM payment WHERE (%(merchant)s IS NULL OR merchant_id = %(merchant)s)"
                " ORDER BY created_at DESC, id LIMIT %(cap)s) s ON s.id = o.aggregate_id",
                params,
            )
            outbox = [OutboxRow(r["aggregate_id"], r["event_type"]) for r in cursor.fetchall()]
            cursor.execute(
                "SELECT merchant_id, currency, status, COUNT(*) AS n, SUM(amount) AS total,"
                " MAX(updated_at) AS last_activity"
                " FROM payment WHERE (%(merchant)s IS NULL OR merchant_id = %(merchant)s)"
                " GROUP BY merchant_id, currency, status",
                params,
            )
            groups = cursor.fetchall()
            totals = [
                StatusTotal(r["merchant_id"], r["currency"], r["status"], int(r["total"]), r["last_activity"])
                for r in groups
            ]
            cursor.execute(
                "SELECT merchant_id, currency, authorized_total, captured_total, refunded_total"
                " FROM merchant_balance WHERE (%(merchant)s IS NULL OR merchant_id = %(merchant)s)",
                params,
            )
            projections = {
                (r["merchant_id"], r["currency"]): {name: int(r[name]) for name in PROJECTION_FIELDS}
                for r in cursor.fetchall()
            }
        truncated = sum(int(r["n"]) for r in groups) > len(payments)
        result = reconcile(
            payments, ledger, outbox, totals, projections, utc_now(), self.config.reconciliation_grace_seconds
        )
        cap = self.config.report_list_limit
        offending_ids = [issue.payment_id for issue in result.payment_issues]
        offending_merchants = sorted(
            {issue.merchant_id for issue in result.payment_issues}
            | {item["merchantId"] for item in result.projection_issues}
        )
        verdict = "balanced" if result.balanced else "NOT balanced"
        summary = (
            f"reconciliation {verdict}: {result.checked_payments} payment(s), "
            f"{result.checked_merchants} merchant(s); {len(offending_ids)} payment issue(s), "
            f"{len(result.projection_issues)} projection issue(s), "
            f"{len(result.lagging_projections)} projection(s) still catching up"
        )
        if offending_ids:
            summary += f"; e.g. {offending_ids[0]}: {result.payment_issues[0].problems[0]}"
        return {
            "summary": summary,
            "balanced": result.balanced,
            "merchantId": params["merchant"],
            "checkedPayments": result.checked_payments,
            "checkedMerchants": result.checked_merchants,
            "truncated": truncated,
            "offendingPaymentIds": offending_ids[:cap],
            "offendingMerchants": offending_merchants[:cap],
            "paymentIssues": [issue.as_dict() for issue in result.payment_issues[:cap]],
            "projectionIssues": result.projection_issues[:cap],
            "laggingProjections": result.lagging_projections[:cap],
        }

    # -- idempotency records -------------------------------------------------------------------

    def idempotency_records(self, key: str | None, merchant_id: str | None = None) -> dict[str, Any]:
        """Where an idempotency key stands (payfn keeps these records in MariaDB, next to the payment)."""
        if not key or not IDEMPOTENCY_KEY_RE.fullmatch(key):
            raise ValidationFailed(errors=[FieldError("key", "is required: 1-64 printable ASCII characters")])
        rows = self.database.fetch_all(
            "SELECT merchant_id, idempotency_key, status, payment_id, response_status, created_at,"
            " in_progress_until, expires_at, TIMESTAMPDIFF(SECOND, UTC_TIMESTAMP(3), expires_at) AS ttl_s"
            " FROM idempotency_record WHERE idempotency_key = %(key)s"
            " AND (%(merchant)s IS NULL OR merchant_id = %(merchant)s)"
            " ORDER BY created_at DESC LIMIT %(limit)s",
            {"key": key, "merchant": _merchant_param(merchant_id), "limit": self.config.report_list_limit},
        )
        records = [
            {
                "merchantId": row["merchant_id"],
                "idempotencyKey": row["idempotency_key"],
                "status": row["status"],
                "paymentId": row["payment_id"],
                "responseStatus": row["response_status"],
                "createdAt": _iso(row["created_at"]),
                "inProgressUntil": _iso(row["in_progress_until"]),
                "expiresAt": _iso(row["expires_at"]),
                "ttlSeconds": max(0, int(row["ttl_s"])),
                "live": int(row["ttl_s"]) > 0,
            }
            for row in rows
        ]
        described = "; ".join(
            f"{r['merchantId']}: {r['status']} payment {r['paymentId']} ttl {r['ttlSeconds']} s"
            for r in records[:3]
        )
        summary = f"idempotency key {key!r}: {len(records)} record(s)" + (
            f" — {described}" if records else ""
        )
        return {
            "summary": summary,
            "storage": "mariadb",
            "key": key,
            "merchantId": merchant_id or None,
            "count": len(records),
            "records": records,
        }


def _max_age(raw: str | int | None) -> int:
    if raw is None or raw == "":
        return 5
    text = str(raw).strip()
    minutes = parse_decimal(text)
    if minutes is None or minutes > MAX_OUTBOX_AGE_MINUTES:
        raise ValidationFailed(
            errors=[FieldError("maxAgeMinutes", f"must be an integer from 0 to {MAX_OUTBOX_AGE_MINUTES}")]
        )
    return minutes
