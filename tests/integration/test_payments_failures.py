"""Dependencies failing under the ingest functions: Kafka, MariaDB, Redis stopped.

All run against a PRIVATE MariaDB, Redis and Kafka broker (the supervisor's own
component classes on free ports), so stopping them never disturbs the shared
stack or its shared breaker state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pymysql
import pytest
from payfn_shared.payments import service as service_module
from payfn_shared.payments.outbox import OutboxRecord
from payfn_shared.payments.publisher import BREAKER_OPEN_ERROR, KafkaPublisher, PublisherConfig
from payfn_shared.payments.service import PaymentService
from payfn_shared.payments.topics import PAYMENT_AUTHORIZED
from payfn_shared.platform.breaker import BreakerConfig, RedisCircuitBreaker
from payfn_shared.platform.db import Database, DbConfig
from payfn_shared.platform.idempotency import MariaDbIdempotencyStore
from payfn_shared.platform.ratelimit import RateLimiter
from payfn_shared.platform.redis_client import create_redis

from infra.stack.supervisor import Supervisor
from tests.apigw import authorize_event, capture_event, get_event, invoke, load_function, refund_event
from tests.integration.payments_support import authorize_body, count, merchant, private_stack, rows, rows_once

pytestmark = pytest.mark.slow

MINIMUM_CALLS = 3


@dataclass
class Private:
    supervisor: Supervisor
    breaker: RedisCircuitBreaker
    authorize: Any
    capture: Any
    refund: Any
    get: Any

    def sql(self) -> pymysql.connections.Connection:
        s = self.supervisor.settings
        return pymysql.connect(host=s.db_host, port=s.db_port, user=s.db_user, password=s.db_password,
                               database=s.db_name, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="module")
def private(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    with private_stack(stack.settings, tmp_path_factory.mktemp("ingest-private")) as supervisor:
        s = supervisor.settings
        database = Database(s, DbConfig(db_read_timeout=2, db_write_timeout=2, db_lock_wait_timeout=2,
                                        db_retry_attempts=2, db_ping_after_idle=0.0))
        redis_client = create_redis(s.redis_url)
        breaker = RedisCircuitBreaker(
            "kafka-publisher",
            BreakerConfig(sliding_window_size=10, minimum_number_of_calls=MINIMUM_CALLS,
                          wait_duration_in_open_state_seconds=600, state_cache_seconds=0.0),
            redis_client=redis_client,
        )
        publisher = KafkaPublisher(s.kafka_bootstrap, PublisherConfig(kafka_publish_timeout_ms=500), breaker)
        _warm(publisher)
        limiter = RateLimiter(redis_client)
        service = PaymentService(database, MariaDbIdempotencyStore(database), limiter, publisher)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(service_module, "_service", service)
            yield Private(supervisor, breaker, load_function("authorize"), load_function("capture"),
                          load_function("refund"), load_function("get_payment"))
        publisher.close()
        database.close()
        redis_client.close()


def _warm(publisher: KafkaPublisher) -> None:
    """Like a function's init: the first publish of a new producer waits for its handshake
    (0.5–1 s, longer than this test's 500 ms publish timeout)."""
    publisher.warm()
    probe = OutboxRecord(0, "warm-up", "WARM_UP", PAYMENT_AUTHORIZED, "warm-up", b"{}")
    deadline = time.monotonic() + 30
    while publisher.deliver([probe])[0] is not None:
        assert time.monotonic() < deadline, "the private broker never acknowledged a record"


def _outbox(connection: pymysql.connections.Connection, payment_id: str) -> dict[str, Any]:
    sql = "SELECT published_at, attempts, last_error FROM outbox_event WHERE aggregate_id = %s"
    row, = rows(connection, sql, (payment_id,))
    return row


def test_kafka_down_still_answers_and_keeps_the_outbox_row(private: Private) -> None:
    m = merchant()
    with private.sql() as sql:
        first = invoke(private.authorize, authorize_event(authorize_body(m)))
        assert first.status == 200
        rows_once(sql, "SELECT published_at FROM outbox_event WHERE aggregate_id = %s",
                  (first.body["paymentId"],), lambda found: found[0]["published_at"] is not None)

        private.supervisor.down(["kafka"])

        failed = 0
        while private.breaker.snapshot()["state"] != "OPEN":
            assert failed < MINIMUM_CALLS, "the breaker opens once the minimum number of calls is reached"
            reply = invoke(private.authorize, authorize_event(authorize_body(m)))
            assert reply.status == 200 and reply.body["status"] == "REQUESTED"
            row = _outbox(sql, reply.body["paymentId"])
            assert row["published_at"] is None and row["attempts"] == 1
            assert row["last_error"].startswith("KafkaTimeoutError"), "the wait on the broker was bounded"
            failed += 1

        refused = invoke(private.authorize, authorize_event(authorize_body(m)))
        assert refused.status == 200
        row = _outbox(sql, refused.body["paymentId"])
        assert row["published_at"] is None
        assert row["last_error"] == BREAKER_OPEN_ERROR, "refused by the breaker: Kafka was not waited on"
        assert private.breaker.snapshot()["numberOfNotPermittedCalls"] >= 1
        unpublished = count(sql, "SELECT COUNT(*) FROM outbox_event WHERE published_at IS NULL")
        assert unpublished == failed + 1


def test_database_down_is_503_and_writes_nothing(private: Private) -> None:
    m = merchant()
    existing = invoke(private.authorize, authorize_event(authorize_body(m))).body["paymentId"]
    body = authorize_body(m)

    private.supervisor.down(["mariadb"])
    try:
        for reply in (
            invoke(private.authorize, authorize_event(body)),
            invoke(private.capture, capture_event(existing, {"merchantId": m})),
            invoke(private.refund, refund_event(existing, {"merchantId": m, "reason": "x"})),
            invoke(private.get, get_event(existing, m)),
        ):
            assert (reply.status, reply.body["code"]) == (503, "SERVICE_UNAVAILABLE")
            assert "Traceback" not in reply.body["message"]
    finally:
        private.supervisor.up()

    with private.sql() as sql:
        key = body["idempotencyKey"]
        assert count(sql, "SELECT COUNT(*) FROM payment WHERE idempotency_key = %s", (key,)) == 0
        assert count(sql, "SELECT COUNT(*) FROM idempotency_record WHERE idempotency_key = %s", (key,)) == 0
        assert rows(sql, "SELECT status FROM payment WHERE id = %s", (existing,)) == [{"status": "REQUESTED"}]
        assert count(sql, "SELECT COUNT(*) FROM ledger_entry WHERE payment_id = %s", (existing,)) == 0
        assert count(sql, "SELECT COUNT(*) FROM outbox_event WHERE aggregate_id = %s", (existing,)) == 1

    retried = invoke(private.authorize, authorize_event(body))
    assert retried.status == 200 and "idempotent-replayed" not in retried.headers, "no claim was left behind"
    assert invoke(private.capture, capture_event(existing, {"merchantId": m})).status == 200


def test_redis_down_still_authorizes(private: Private) -> None:
    """Rate limiter fails open and the breaker falls back to its local store: payments go on."""
    m = merchant()
    private.supervisor.down(["redis"])
    try:
        reply = invoke(private.authorize, authorize_event(authorize_body(m)))
        assert reply.status == 200 and reply.body["status"] == "REQUESTED"
        assert private.breaker.snapshot()["storage"] == "local-fallback"
    finally:
        private.supervisor.up()
    with private.sql() as sql:
        assert count(sql, "SELECT COUNT(*) FROM payment WHERE merchant_id = %s", (m,)) == 1
        sql_outbox = "SELECT COUNT(*) FROM outbox_event WHERE aggregate_id = %s"
        assert count(sql, sql_outbox, (reply.body["paymentId"],)) == 1
