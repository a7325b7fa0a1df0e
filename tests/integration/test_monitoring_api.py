"""MONITORING-SERVICE handlers, invoked in process with API Gateway REST events, on the live stack."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType

import pymysql
import pytest
import redis
from payfn_shared.monitoring.config import MonitoringConfig
from payfn_shared.monitoring.readonly_db import QueryTimeout, ReadOnlyDatabase
from payfn_shared.payments.domain import PaymentStatus
from payfn_shared.payments.events import EVENT_AUTHORIZED
from payfn_shared.platform.config import Settings
from payfn_shared.platform.ratelimit import RateLimitConfig, RateLimiter, bucket_key

from tests.apigw import HttpReply, invoke, rest_event
from tests.integration.monitoring_support import (
    Connection,
    RowCounter,
    SeededMerchant,
    insert_outbox_event,
    load_monitoring_function,
    new_merchant,
    seed_merchant,
)


@pytest.fixture(scope="module")
def database_fn(stack: object) -> ModuleType:
    return load_monitoring_function("database_monitoring")


@pytest.fixture(scope="module")
def breaker_fn(stack: object) -> ModuleType:
    return load_monitoring_function("breaker_monitoring")


@pytest.fixture
def seeded(db: Connection) -> SeededMerchant:
    return seed_merchant(db)


def get(module: ModuleType, path: str, **query: str) -> HttpReply:
    return invoke(module, rest_event("GET", path, query=query or None))


# -- database ---------------------------------------------------------------------------------


def test_payments_by_natural_language_filter(database_fn: ModuleType, seeded: SeededMerchant) -> None:
    everything = get(database_fn, "/monitoring/database/payments", filter=f"merchant {seeded.merchant_id}")
    assert everything.status == 200, everything.body
    assert {p["paymentId"] for p in everything.body["payments"]} == set(seeded.payments.values())
    assert everything.body["summary"].startswith("3 payment(s)")

    refunded = get(
        database_fn,
        "/monitoring/database/payments",
        filter=f"refunded merchant={seeded.merchant_id} last 24h over 2999 KRW",
        limit="5",
    )
    assert refunded.status == 200
    assert [p["paymentId"] for p in refunded.body["payments"]] == [seeded.payments["REFUNDED"]]
    assert refunded.body["filter"]["statuses"] == ["REFUNDED"] and refunded.body["limit"] == 5

    none_today = get(
        database_fn,
        "/monitoring/database/payments",
        filter=f"merchant {seeded.merchant_id} completed under 100",
    )
    assert none_today.body["count"] == 0


def test_payments_limit_is_capped(database_fn: ModuleType, seeded: SeededMerchant) -> None:
    one = get(
        database_fn, "/monitoring/database/payments", filter=f"merchant {seeded.merchant_id}", limit="1"
    )
    assert one.body["count"] == 1
    too_many = get(database_fn, "/monitoring/database/payments", limit="101")
    assert too_many.status == 400
    assert too_many.body["code"] == "VALIDATION_FAILED"
    assert too_many.body["errors"][0]["field"] == "limit"


def test_unknown_filter_word_is_a_400(database_fn: ModuleType) -> None:
    reply = get(database_fn, "/monitoring/database/payments", filter="refundd payments")
    assert reply.status == 400
    assert reply.body["code"] == "VALIDATION_FAILED"
    assert "refundd" in reply.body["errors"][0]["message"]


INJECTIONS = [
    "' OR 1=1 --",
    "completed'; DELETE FROM payment; --",
    "merchant x' OR '1'='1",
    "merchant x; DROP TABLE ledger_entry",
    "refunded UNION SELECT id, merchant_id FROM payment",
    "1) OR (1=1",
    "merchant=a%27%20OR%201=1",
    "KRW'; UPDATE payment SET status='REFUNDED' WHERE '1'='1",
]


def test_sql_injection_attempts_change_nothing(
    database_fn: ModuleType, db: Connection, seeded: SeededMerchant
) -> None:
    counter = RowCounter(db, seeded.merchant_id)
    before = counter.counts()
    for attack in INJECTIONS:
        reply = get(database_fn, "/monitoring/database/payments", filter=attack)
        assert reply.status == 400 or reply.body["count"] == 0, (attack, reply.body)
    assert counter.counts() == before
    intact = get(database_fn, "/monitoring/database/payments", filter=f"merchant {seeded.merchant_id}")
    assert {p["status"] for p in intact.body["payments"]} == {"REQUESTED", "COMPLETED", "REFUNDED"}


def test_statistics(database_fn: ModuleType, db: Connection) -> None:
    seeded = seed_merchant(db, age=timedelta(minutes=1), currency="JPY")
    reply = get(database_fn, "/monitoring/database/statistics", timeRange="1h")
    assert reply.status == 200, reply.body
    body = reply.body
    assert body["timeRange"] == "last 1h"
    for status in ("REQUESTED", "COMPLETED", "REFUNDED"):
        assert body["byStatus"][status]["count"] >= 1
        assert body["byStatus"][status]["amounts"]["JPY"] >= 1000
    assert body["total"] == sum(entry["count"] for entry in body["byStatus"].values())
    assert 0 < body["rates"]["capturePercent"] <= 100
    assert seeded.merchant_id  # the seeded rows are inside the window
    assert get(database_fn, "/monitoring/database/statistics", timeRange="forever").status == 400


def test_outbox_reports_stuck_rows_with_attempts_and_error(database_fn: ModuleType, db: Connection) -> None:
    seeded = seed_merchant(db)
    payment_id = seeded.payments["REQUESTED"]
    old = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=30)
    with db.cursor() as cursor:
        event_id = insert_outbox_event(
            cursor,
            payment_id,
            seeded.merchant_id,
            EVENT_AUTHORIZED,
            PaymentStatus.REQUESTED,
            1000,
            "KRW",
            old,
            published=False,
            attempts=3,
            last_error="KafkaTimeoutError: monitoring test",
        )
    try:
        reply = get(database_fn, "/monitoring/database/outbox", maxAgeMinutes="15")
        assert reply.status == 200, reply.body
        body = reply.body
        assert body["maxAgeMinutes"] == 15 and not body["healthy"]
        assert body["backlog"] >= 1 and body["stuckCount"] >= 1
        assert body["oldestUnpublishedAgeSeconds"] >= 29 * 60
        ours = [row for row in body["stuck"] if row["eventId"] == event_id]
        assert ours == [
            {
                **ours[0],
                "paymentId": payment_id,
                "eventType": EVENT_AUTHORIZED,
                "attempts": 3,
                "lastError": "KafkaTimeoutError: monitoring test",
            }
        ]
        assert get(database_fn, "/monitoring/database/outbox", maxAgeMinutes="-1").status == 400
        failed_filter = f"failed merchant {seeded.merchant_id}"
        failed = get(database_fn, "/monitoring/database/payments", filter=failed_filter)
        assert [p["paymentId"] for p in failed.body["payments"]] == [payment_id]
    finally:
        with db.cursor() as cursor:
            cursor.execute("DELETE FROM outbox_event WHERE event_id = %s", (event_id,))


def test_ledger_totals_by_account(database_fn: ModuleType, seeded: SeededMerchant) -> None:
    reply = get(database_fn, "/monitoring/database/ledger")
    assert reply.status == 200, reply.body
    accounts = {(a["account"], a["currency"]): a for a in reply.body["accounts"]}
    cash, receivable = accounts[("cash", "KRW")], accounts[("merchant_receivable", "KRW")]
    assert cash["balance"] == -receivable["balance"]
    assert cash["credits"] >= 5000 and receivable["debits"] >= 5000
    assert reply.body["byTransition"]["CAPTURE"]["entries"] >= 2
    assert reply.body["balanced"] is True


def test_reconciliation_balanced_then_finds_a_bad_ledger_row(
    database_fn: ModuleType, db: Connection, seeded: SeededMerchant
) -> None:
    clean = get(database_fn, "/monitoring/database/reconciliation", merchantId=seeded.merchant_id)
    assert clean.status == 200, clean.body
    assert clean.body["balanced"] is True, clean.body
    assert clean.body["checkedPayments"] == 3 and clean.body["offendingPaymentIds"] == []

    bad = seeded.payments["REQUESTED"]
    with db.cursor() as cursor:  # a capture entry without the status change: the ledger says paid
        cursor.execute(
            "INSERT INTO ledger_entry (payment_id, transition, debit_account, credit_account, amount,"
            " currency, created_at)"
            " VALUES (%s, 'CAPTURE', 'merchant_receivable', 'cash', 1000, 'KRW', UTC_TIMESTAMP(3))",
            (bad,),
        )
    broken = get(database_fn, "/monitoring/database/reconciliation", merchantId=seeded.merchant_id)
    assert broken.body["balanced"] is False
    assert broken.body["offendingPaymentIds"] == [bad]
    assert broken.body["offendingMerchants"] == [seeded.merchant_id]
    assert "unexpected CAPTURE ledger entry" in broken.body["paymentIssues"][0]["problems"][0]
    assert bad in broken.body["summary"]


def test_reconciliation_finds_a_wrong_projection(
    database_fn: ModuleType, db: Connection, seeded: SeededMerchant
) -> None:
    with db.cursor() as cursor:
        cursor.execute(
            "UPDATE merchant_balance SET captured_total = captured_total + 1 WHERE merchant_id = %s",
            (seeded.merchant_id,),
        )
    reply = get(database_fn, "/monitoring/database/reconciliation", merchantId=seeded.merchant_id)
    assert reply.body["balanced"] is False
    assert reply.body["offendingPaymentIds"] == []
    assert reply.body["offendingMerchants"] == [seeded.merchant_id]
    issue = reply.body["projectionIssues"][0]
    assert issue["expected"]["captured_total"] + 1 == issue["actual"]["captured_total"]


def test_reconciliation_of_everything_names_a_broken_merchant(
    database_fn: ModuleType, db: Connection, seeded: SeededMerchant
) -> None:
    with db.cursor() as cursor:
        cursor.execute(
            "DELETE FROM outbox_event WHERE aggregate_id = %s AND event_type = 'PAYMENT_REFUNDED'",
            (seeded.payments["REFUNDED"],),
        )
    reply = get(database_fn, "/monitoring/database/reconciliation")
    assert reply.status == 200
    assert reply.body["balanced"] is False
    assert seeded.payments["REFUNDED"] in reply.body["offendingPaymentIds"]


def test_idempotency_record_lookup(database_fn: ModuleType, db: Connection) -> None:
    merchant, key, payment_id = new_merchant(), f"idem-{uuid.uuid4()}", str(uuid.uuid4())
    with db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO idempotency_record (merchant_id, idempotency_key, request_hash, status, payment_id,"
            " response_status, response_body, created_at, in_progress_until, expires_at) VALUES"
            " (%s, %s, %s, 'COMPLETED', %s, 200, '{}', UTC_TIMESTAMP(3), UTC_TIMESTAMP(3),"
            " UTC_TIMESTAMP(3) + INTERVAL 1 HOUR)",
            (merchant, key, "0" * 64, payment_id),
        )
    reply = get(database_fn, "/monitoring/redis/idempotency", key=key, merchantId=merchant)
    assert reply.status == 200, reply.body
    [record] = reply.body["records"]
    assert (record["paymentId"], record["status"], record["live"]) == (payment_id, "COMPLETED", True)
    assert 3500 <= record["ttlSeconds"] <= 3600
    assert get(database_fn, "/monitoring/redis/idempotency", key=key).body["count"] == 1
    assert get(database_fn, "/monitoring/redis/idempotency").status == 400


def test_monitoring_user_cannot_write(settings: Settings) -> None:
    reader = ReadOnlyDatabase(settings)
    try:
        with pytest.raises(pymysql.err.OperationalError) as caught, reader.snapshot() as cursor:
            cursor.execute("DELETE FROM payment WHERE merchant_id = %s", ("nobody",))
        assert caught.value.args[0] == 1142  # DELETE command denied to user 'payreader'
        with reader.snapshot() as cursor:
            cursor.execute("SELECT @@tx_read_only AS ro, @@max_statement_time AS limit_s")
            session = cursor.fetchone()
        assert session["ro"] == 1 and session["limit_s"] > 0
    finally:
        reader.close()


def test_a_runaway_query_is_cut_by_the_statement_timeout(settings: Settings) -> None:
    reader = ReadOnlyDatabase(settings, MonitoringConfig(statement_timeout_seconds=0.2))
    try:
        with pytest.raises(QueryTimeout) as caught:  # 10^10 rows from MariaDB's sequence engine
            reader.fetch_all("SELECT SUM(a.seq * b.seq) AS n FROM seq_1_to_100000 a JOIN seq_1_to_100000 b")
        assert caught.value.status == 503 and caught.value.code == "QUERY_TIMEOUT"
        assert reader.fetch_all("SELECT 1 AS one") == [{"one": 1}]  # the connection is still usable
    finally:
        reader.close()


# -- circuit breaker ---------------------------------------------------------------------------


def test_breaker_status_health_diagnose(breaker_fn: ModuleType) -> None:
    status = get(breaker_fn, "/monitoring/circuit-breaker/status")
    assert status.status == 200, status.body
    snapshot = status.body["kafka-publisher"]
    assert snapshot["state"] in ("CLOSED", "OPEN", "HALF_OPEN", "DISABLED", "FORCED_OPEN")
    assert {"failureRate", "slowCallRate", "numberOfBufferedCalls", "storage"} <= set(snapshot)

    health = get(breaker_fn, "/monitoring/circuit-breaker/health")
    assert health.status == 200
    assert health.body["kafka"]["reachable"] is True
    assert health.body["kafka"]["missingTopics"] == []
    assert health.body["status"] in ("UP", "DEGRADED", "DOWN")

    diagnosis = get(breaker_fn, "/monitoring/circuit-breaker/diagnose")
    assert diagnosis.status == 200
    assert diagnosis.body["severity"] in ("ok", "warning", "critical")
    assert diagnosis.body["outbox"] is not None
    assert all({"severity", "finding", "recommendation"} == set(f) for f in diagnosis.body["findings"])


def test_breaker_failure_pattern_from_prometheus(breaker_fn: ModuleType) -> None:
    reply = get(breaker_fn, "/monitoring/circuit-breaker/failure-pattern", timeRange="30m")
    assert reply.status == 200, reply.body
    assert reply.body["prometheusReachable"] is True
    assert reply.body["windowSeconds"] == 1800
    assert reply.body["pattern"] in ("healthy", "quiet", "degraded", "outage")
    assert get(breaker_fn, "/monitoring/circuit-breaker/failure-pattern", timeRange="soon").status == 400


# -- redis ------------------------------------------------------------------------------------


@pytest.fixture
def redis_fn(stack: object, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The Redis monitoring function configured with a tiny authorize limit, so a test can exhaust it."""
    monkeypatch.setenv("PAYFN_RATELIMIT_AUTHORIZE_LIMIT", "2")
    monkeypatch.setenv("PAYFN_RATELIMIT_PERIOD_SECONDS", "3600")
    return load_monitoring_function("redis_monitoring")


@pytest.fixture
def exhausted_merchant(redis_client: redis.Redis) -> Iterator[str]:
    merchant = new_merchant()
    limiter = RateLimiter(redis_client, RateLimitConfig(authorize_limit=2, period_seconds=3600))
    for _ in range(2):
        assert limiter.check(merchant, "authorize").allowed
    assert not limiter.check(merchant, "authorize").allowed
    yield merchant
    redis_client.delete(bucket_key(merchant, "authorize"))


def test_rate_limit_views(redis_fn: ModuleType, exhausted_merchant: str) -> None:
    one = get(redis_fn, "/monitoring/redis/rate-limit", merchantId=exhausted_merchant)
    assert one.status == 200, one.body
    assert one.body["blocked"] is True
    authorize = one.body["buckets"]["authorize"]
    assert (authorize["used"], authorize["limit"], authorize["allowed"]) == (2, 2, False)
    assert authorize["retryAfterSeconds"] > 0
    assert one.body["buckets"]["refund"]["used"] == 0

    every = get(redis_fn, "/monitoring/redis/rate-limit/all")
    assert exhausted_merchant in {b["merchantId"] for b in every.body["buckets"]} or every.body["truncated"]

    blocked = get(redis_fn, "/monitoring/redis/rate-limit/blocked")
    assert exhausted_merchant in blocked.body["merchants"]
    assert exhausted_merchant in blocked.body["summary"] or blocked.body["count"] > 5

    assert get(redis_fn, "/monitoring/redis/rate-limit").status == 400
    assert get(redis_fn, "/monitoring/redis/rate-limit", merchantId="bad id!").status == 400


def test_cache_stats_and_ttl_analysis(redis_fn: ModuleType, redis_client: redis.Redis) -> None:
    key = f"payfn:montest:{uuid.uuid4().hex}"
    redis_client.set(key, "1", ex=120)
    try:
        stats = get(redis_fn, "/monitoring/redis/cache-stats")
        assert stats.status == 200, stats.body
        assert stats.body["keys"] >= 1 and stats.body["usedMemoryBytes"] > 0
        assert stats.body["hits"] >= 0 and stats.body["misses"] >= 0
        assert (
            stats.body["payfnKeysByFamily"].get("payfn:montest", 0) >= 1
            or not stats.body["payfnScanComplete"]
        )

        ttl = get(redis_fn, "/monitoring/redis/ttl-analysis")
        assert ttl.status == 200
        family = ttl.body["families"]["payfn:montest"]
        assert family["buckets"]["1m-5m"] >= 1 and family["noExpiry"] == 0
    finally:
        redis_client.delete(key)
