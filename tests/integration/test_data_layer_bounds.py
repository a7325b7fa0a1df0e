"""Two data-layer holes found by a hostile local probe (issue #18), against the live MariaDB.

1. Keys that differ only by trailing spaces are different keys (NO PAD collation).
2. The SELECT-only user cannot stall a payment: the server ends its sessions that hold
   row locks or run past their limits (``infra/stack/migrations/admin/reader_guard.sql``).
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pymysql
import pytest
from payfn_shared.payments.service import reset_payment_service
from payfn_shared.platform.config import Settings

from tests.apigw import authorize_event, capture_event, invoke, load_function
from tests.integration.payments_support import authorize_body, merchant, rows

#: What a capture may wait behind a reader's lock: the guard runs every second.
LOCK_BOUND_SECONDS = 3
#: CR_SERVER_LOST: what a session ended by the server sees on its next statement.
LOST_CONNECTION = 2013


@pytest.fixture(scope="module")
def fn(stack: Any) -> Iterator[SimpleNamespace]:
    reset_payment_service()
    yield SimpleNamespace(authorize=load_function("authorize"), capture=load_function("capture"))
    reset_payment_service()


@pytest.mark.parametrize("keys", [("pad-k", "pad-k "), ("pad-k ", "pad-k"), ("pad-k", "pad-k  ")])
def test_keys_that_differ_by_trailing_spaces_are_two_payments(fn: SimpleNamespace, db: Any,
                                                              keys: tuple[str, str]) -> None:
    shop = merchant()
    first, second = (invoke(fn.authorize, authorize_event(authorize_body(shop, key=key))) for key in keys)
    assert (first.status, second.status) == (200, 200), (first.body, second.body)
    assert first.body["paymentId"] != second.body["paymentId"]
    assert "Idempotent-Replayed" not in second.headers
    stored = rows(db, "SELECT idempotency_key FROM payment WHERE merchant_id = %s", (shop,))
    assert sorted(row["idempotency_key"] for row in stored) == sorted(keys)
    replay = invoke(fn.authorize, authorize_event(authorize_body(shop, key=keys[1])))
    assert replay.status == 200 and replay.body["paymentId"] == second.body["paymentId"]


def test_key_columns_compare_every_byte(db: Any) -> None:
    columns = rows(db, "SELECT TABLE_NAME, COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS"
                       " WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME IN"
                       " ('merchant_id', 'idempotency_key', 'event_id', 'consumer')")
    assert len(columns) == 8
    assert {row["COLLATION_NAME"] for row in columns} == {"utf8mb4_nopad_bin"}, columns


def reader(settings: Settings) -> pymysql.connections.Connection:
    return pymysql.connect(host=settings.db_host, port=settings.db_port, user=settings.db_readonly_user,
                           password=settings.db_readonly_password, database=settings.db_name,
                           read_timeout=30)


@pytest.mark.parametrize("lock", ["FOR UPDATE", "LOCK IN SHARE MODE"])
def test_a_readers_row_lock_cannot_hold_up_a_capture(fn: SimpleNamespace, settings: Settings,
                                                      lock: str) -> None:
    """The capture's own lock wait is cut to the bound: it can only succeed if the reader's lock goes."""
    shop = merchant()
    authorized = invoke(fn.authorize, authorize_event(authorize_body(shop)))
    payment_id = authorized.body["paymentId"]
    hostile = reader(settings)
    with hostile.cursor() as cursor:
        cursor.execute("SET SESSION max_statement_time = 0")  # what the account's own limit cannot stop
        cursor.execute("START TRANSACTION")
        cursor.execute(f"SELECT id FROM payment WHERE id = %s {lock}", (payment_id,))  # noqa: S608 - fixed
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAYFN_DB_LOCK_WAIT_TIMEOUT", str(LOCK_BOUND_SECONDS))
        patch.setenv("PAYFN_DB_RETRY_ATTEMPTS", "1")
        reset_payment_service()
        captured = invoke(fn.capture, capture_event(payment_id, {"merchantId": shop}))
    reset_payment_service()
    assert captured.status == 200 and captured.body["status"] == "COMPLETED", captured.body
    with pytest.raises(pymysql.err.OperationalError) as ended, hostile.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert ended.value.args[0] == LOST_CONNECTION  # the server ended the session that held the lock
    hostile.close()


def test_a_reader_cannot_outrun_its_statement_limit(settings: Settings) -> None:
    connection = reader(settings)
    with pytest.raises(pymysql.err.OperationalError) as ended, connection.cursor() as cursor:
        cursor.execute("SET SESSION max_statement_time = 0")
        cursor.execute("SELECT SLEEP(25)")
    assert ended.value.args[0] == LOST_CONNECTION  # ended by the server's guard, not finished
    connection.close()


def test_the_readers_own_limit_is_the_servers(settings: Settings) -> None:
    connection = reader(settings)
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@max_statement_time")
        assert float(cursor.fetchone()[0]) == settings.db_readonly_statement_seconds
    connection.close()
