"""Concurrency: one idempotency key hammered by 100 threads; one payment captured by many.

Each thread gets its own database connection (``payfn_shared.platform.db`` keeps one per
thread), as concurrent Lambda execution environments would.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from payfn_shared.payments.service import reset_payment_service

from tests.apigw import HttpReply, authorize_event, capture_event, invoke, load_function, refund_event
from tests.integration.payments_support import authorize_body, count, merchant

THREADS = 100


@pytest.fixture(scope="module")
def fn(stack: Any) -> Iterator[SimpleNamespace]:
    reset_payment_service()
    yield SimpleNamespace(
        authorize=load_function("authorize"), capture=load_function("capture"), refund=load_function("refund")
    )
    reset_payment_service()


def _together(n: int, call: Callable[[], HttpReply]) -> list[HttpReply]:
    """Run ``call`` in ``n`` threads released at the same moment."""
    barrier = threading.Barrier(n)

    def run() -> HttpReply:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: run(), range(n)))


def _kind(reply: HttpReply) -> str:
    if reply.status == 200:
        return "replay" if reply.headers.get("idempotent-replayed") == "true" else "created"
    return f"{reply.status} {reply.body.get('code')}"


def test_one_key_many_threads_one_payment(fn: SimpleNamespace, db: Any) -> None:
    m = merchant()
    body = authorize_body(m, amount=777)
    replies = _together(THREADS, lambda: invoke(fn.authorize, authorize_event(body)))
    kinds = Counter(_kind(r) for r in replies)
    assert kinds["created"] == 1, kinds
    assert set(kinds) <= {"created", "replay", "409 REQUEST_IN_PROGRESS"}, kinds
    payment_ids = {r.body["paymentId"] for r in replies if r.status == 200}
    assert len(payment_ids) == 1
    pid = payment_ids.pop()
    assert count(db, "SELECT COUNT(*) FROM payment WHERE merchant_id = %s", (m,)) == 1
    assert count(db, "SELECT COUNT(*) FROM outbox_event WHERE aggregate_id = %s", (pid,)) == 1
    sql = "SELECT COUNT(*) FROM idempotency_record WHERE merchant_id = %s AND status = 'COMPLETED'"
    assert count(db, sql, (m,)) == 1
    after = invoke(fn.authorize, authorize_event(body))
    assert _kind(after) == "replay" and after.body["paymentId"] == pid


def test_concurrent_captures_and_refunds_of_one_payment(fn: SimpleNamespace, db: Any) -> None:
    m = merchant()
    pid = invoke(fn.authorize, authorize_event(authorize_body(m))).body["paymentId"]
    captures = Counter(_kind(r) for r in _together(
        20, lambda: invoke(fn.capture, capture_event(pid, {"merchantId": m}))))
    assert captures == Counter({"created": 1, "409 CAPTURE_CONFLICT": 19})
    refunds = Counter(_kind(r) for r in _together(
        20, lambda: invoke(fn.refund, refund_event(pid, {"merchantId": m, "reason": "dup"}))))
    assert refunds == Counter({"created": 1, "409 REFUND_CONFLICT": 19})
    assert count(db, "SELECT COUNT(*) FROM ledger_entry WHERE payment_id = %s", (pid,)) == 2
    assert count(db, "SELECT COUNT(*) FROM outbox_event WHERE aggregate_id = %s", (pid,)) == 3
