"""The ingest functions against the live MariaDB, Redis and Kafka: every row of the spec's table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from payfn_shared.payments.service import get_payment_service, reset_payment_service
from payfn_shared.payments.validation import AuthorizeRequest
from payfn_shared.platform.config import Settings
from payfn_shared.platform.idempotency import request_hash, utc_now

from infra.sam.template import REPO_ROOT
from tests.apigw import (
    authorize_event,
    capture_event,
    get_event,
    invoke,
    load_function,
    refund_event,
    rest_event,
)
from tests.integration.payments_support import (
    authorize_body,
    count,
    end_offsets,
    find_record,
    merchant,
    payload_of,
    rows,
    rows_once,
)


@pytest.fixture(scope="module")
def fn(stack: Any) -> Iterator[SimpleNamespace]:
    """The five handler modules, cold-started against the live stack."""
    reset_payment_service()
    yield SimpleNamespace(
        authorize=load_function("authorize"),
        capture=load_function("capture"),
        refund=load_function("refund"),
        get=load_function("get_payment"),
        breaker=load_function("circuit_breaker"),
    )
    reset_payment_service()


def _authorize(fn: SimpleNamespace, body: Any, **kwargs: Any) -> Any:
    return invoke(fn.authorize, authorize_event(body, **kwargs))


def test_authorize_capture_refund_get(fn: SimpleNamespace, db: Any) -> None:
    m = merchant()
    auth = _authorize(fn, authorize_body(m, amount=4200, currency="JPY"))
    assert auth.status == 200
    assert auth.body["status"] == "REQUESTED" and auth.body["ledgerEntries"] == []
    assert auth.body["amount"] == 4200 and auth.body["currency"] == "JPY"
    assert auth.body["createdAt"].endswith("Z")
    assert auth.headers["x-ratelimit-limit"] and "idempotent-replayed" not in auth.headers
    pid = auth.body["paymentId"]

    cap = invoke(fn.capture, capture_event(pid, {"merchantId": m}))
    assert cap.status == 200 and cap.body["status"] == "COMPLETED"
    capture_entry = {"debitAccount": "merchant_receivable", "creditAccount": "cash", "amount": 4200}
    assert cap.body["ledgerEntries"] == [capture_entry]

    ref = invoke(fn.refund, refund_event(pid, {"merchantId": m, "reason": "customer request"}))
    assert ref.status == 200 and ref.body["status"] == "REFUNDED"
    refund_entry = {"debitAccount": "cash", "creditAccount": "merchant_receivable", "amount": 4200}
    assert ref.body["ledgerEntries"] == [capture_entry, refund_entry]

    got = invoke(fn.get, get_event(pid, m))
    assert got.status == 200 and got.body["status"] == "REFUNDED" and len(got.body["ledgerEntries"]) == 2
    assert got.body["createdAt"] == auth.body["createdAt"]

    events = rows_once(db, "SELECT event_type, topic, partition_key, published_at FROM outbox_event"
                           " WHERE aggregate_id = %s ORDER BY id", (pid,),
                       lambda found: all(e["published_at"] is not None for e in found))
    assert [e["event_type"] for e in events] == ["PAYMENT_AUTHORIZED", "PAYMENT_CAPTURED", "PAYMENT_REFUNDED"]
    assert all(e["partition_key"] == pid for e in events)


def test_transition_conflicts_leave_one_entry_per_transition(fn: SimpleNamespace, db: Any) -> None:
    m = merchant()
    pid = _authorize(fn, authorize_body(m)).body["paymentId"]

    early = invoke(fn.refund, refund_event(pid, {"merchantId": m, "reason": "too early"}))
    assert (early.status, early.body["code"], early.body["paymentId"]) == (409, "REFUND_CONFLICT", pid)

    assert invoke(fn.capture, capture_event(pid, {"merchantId": m})).status == 200
    again = invoke(fn.capture, capture_event(pid, {"merchantId": m}))
    assert (again.status, again.body["code"]) == (409, "CAPTURE_CONFLICT")

    assert invoke(fn.refund, refund_event(pid, {"merchantId": m, "reason": "r"})).status == 200
    twice = invoke(fn.refund, refund_event(pid, {"merchantId": m, "reason": "r"}))
    assert (twice.status, twice.body["code"]) == (409, "REFUND_CONFLICT")
    late = invoke(fn.capture, capture_event(pid, {"merchantId": m}))
    assert (late.status, late.body["code"]) == (409, "CAPTURE_CONFLICT")

    entries = rows(db, "SELECT transition FROM ledger_entry WHERE payment_id = %s ORDER BY id", (pid,))
    assert [e["transition"] for e in entries] == ["CAPTURE", "REFUND"]
    assert count(db, "SELECT COUNT(*) FROM outbox_event WHERE aggregate_id = %s", (pid,)) == 3


def test_other_merchant_and_unknown_ids_are_not_found(fn: SimpleNamespace, db: Any) -> None:
    m = merchant()
    pid = _authorize(fn, authorize_body(m)).body["paymentId"]
    intruder = merchant()
    for reply in (
        invoke(fn.get, get_event(pid, intruder)),
        invoke(fn.capture, capture_event(pid, {"merchantId": intruder})),
        invoke(fn.refund, refund_event(pid, {"merchantId": intruder, "reason": "x"})),
        invoke(fn.get, get_event(str(uuid.uuid4()), m)),
        invoke(fn.get, get_event("not-a-payment-id", m)),
        invoke(fn.capture, capture_event(str(uuid.uuid4()), {"merchantId": m})),
    ):
        assert (reply.status, reply.body["code"]) == (404, "NOT_FOUND")
    assert rows(db, "SELECT status FROM payment WHERE id = %s", (pid,)) == [{"status": "REQUESTED"}]


def test_idempotent_replay_and_key_reuse(fn: SimpleNamespace, db: Any) -> None:
    m = merchant()
    body = authorize_body(m, amount=999)
    first = _authorize(fn, body)
    reordered = {k: body[k] for k in reversed(list(body))}
    replay = _authorize(fn, reordered)
    assert replay.status == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.body == first.body

    reused = _authorize(fn, {**body, "amount": 1000})
    assert (reused.status, reused.body["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert reused.body["paymentId"] == first.body["paymentId"]

    other_merchant = _authorize(fn, {**body, "merchantId": merchant()})
    assert other_merchant.status == 200 and other_merchant.body["paymentId"] != first.body["paymentId"]

    key = body["idempotencyKey"]
    sql = "SELECT COUNT(*) FROM payment WHERE merchant_id = %s AND idempotency_key = %s"
    assert count(db, sql, (m, key)) == 1
    sql = "SELECT COUNT(*) FROM outbox_event WHERE aggregate_id = %s"
    assert count(db, sql, (first.body["paymentId"],)) == 1


def test_in_flight_key_answers_409(fn: SimpleNamespace, db: Any) -> None:
    """A claim that is IN_PROGRESS (first request still running) is a 409 for its twin."""
    m = merchant()
    body = authorize_body(m)
    service = get_payment_service()
    canonical = AuthorizeRequest(m, body["amount"], body["currency"], body["idempotencyKey"]).canonical()
    claimed = service.idempotency.claim(m, body["idempotencyKey"], request_hash(canonical), str(uuid.uuid4()),
                                        utc_now())
    assert claimed is None
    busy = _authorize(fn, body)
    assert (busy.status, busy.body["code"]) == (409, "REQUEST_IN_PROGRESS")
    assert count(db, "SELECT COUNT(*) FROM payment WHERE merchant_id = %s", (m,)) == 0



#: Authorizes ``sys.argv[1]`` (a JSON body) through the service in a process that dies
#: inside the rate-limit check, as an execution environment SIGKILLed mid-request would.
DIE_MID_AUTHORIZE = """
import json, os, sys
from payfn_shared.payments.service import get_payment_service
from payfn_shared.platform.ratelimit import RateLimiter
from payfn_shared.payments.validation import AuthorizeRequest
RateLimiter.check = lambda self, merchant_id, action: os._exit(9)
body = json.loads(sys.argv[1])
get_payment_service().authorize(AuthorizeRequest(body["merchantId"], body["amount"], body["currency"],
                                                 body["idempotencyKey"]))
"""


def test_a_request_that_died_mid_way_does_not_make_its_retry_a_409(fn: SimpleNamespace, db: Any) -> None:
    """The retry of a request whose process died is served, not told "in progress" for 30 s.

    Before authorize ran in one transaction, the claim committed on its own, and a
    process killed after it left an IN_PROGRESS record behind (no ``release`` runs
    in a dead process): the client's retry got 409 until the claim expired.
    """
    m = merchant()
    body = authorize_body(m)
    path = os.pathsep.join([str(REPO_ROOT / "layers" / "shared"), str(REPO_ROOT)])
    died = subprocess.run([sys.executable, "-c", DIE_MID_AUTHORIZE, json.dumps(body)], timeout=60,
                          env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, check=False)
    assert died.returncode == 9, died.stderr[-2000:]
    retry = _authorize(fn, body)
    assert retry.status == 200 and "idempotent-replayed" not in retry.headers, retry.body
    assert count(db, "SELECT COUNT(*) FROM payment WHERE merchant_id = %s", (m,)) == 1


BAD = "it-bad-requests"


def _too_large() -> dict[str, Any]:
    return {**authorize_body(BAD), "note": "x" * 20_000}


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        ("{\"merchantId\": ", None, 400, "MALFORMED_JSON"),
        ("", None, 400, "MALFORMED_JSON"),
        ("[]", None, 400, "VALIDATION_FAILED"),
        ({"merchantId": BAD, "amount": "100", "currency": "EUR", "idempotencyKey": "k"}, None, 400,
         "VALIDATION_FAILED"),
        ({"merchantId": BAD, "amount": -100, "currency": "EUR", "idempotencyKey": "k"}, None, 400,
         "VALIDATION_FAILED"),
        ({"merchantId": BAD, "amount": 10.5, "currency": "EUR", "idempotencyKey": "k"}, None, 400,
         "VALIDATION_FAILED"),
        ({"merchantId": BAD, "amount": 0, "currency": "EUR", "idempotencyKey": "k"}, None, 400,
         "VALIDATION_FAILED"),
        ({"merchantId": BAD, "amount": 10, "currency": "EURO", "idempotencyKey": "k"}, None, 400,
         "VALIDATION_FAILED"),
        ({"merchantId": BAD, "amount": 10, "currency": "QQQ", "idempotencyKey": "k"}, None, 400,
         "VALIDATION_FAILED"),
        ({"merchantId": "m 1", "amount": 10, "currency": "EUR", "idempotencyKey": "k"}, None, 400,
         "VALIDATION_FAILED"),
        ({"merchantId": BAD, "amount": 10, "currency": "EUR", "idempotencyKey": "k" * 65}, None, 400,
         "VALIDATION_FAILED"),
        ({**authorize_body(BAD), "admin": True}, None, 400, "VALIDATION_FAILED"),
        (authorize_body(BAD), {"Content-Type": "application/x-www-form-urlencoded"}, 400,
         "VALIDATION_FAILED"),
        (_too_large(), None, 413, "PAYLOAD_TOO_LARGE"),
    ],
)
def test_bad_requests_write_nothing(
    fn: SimpleNamespace, db: Any, body: Any, headers: dict[str, str] | None, status: int, code: str
) -> None:
    reply = _authorize(fn, body, headers=headers)
    assert (reply.status, reply.body["code"]) == (status, code)
    assert set(reply.body) >= {"code", "message", "paymentId"}
    if code == "VALIDATION_FAILED" and status == 400:
        assert reply.body["errors"]
    assert count(db, "SELECT COUNT(*) FROM payment WHERE merchant_id = %s", (BAD,)) == 0


def test_transition_body_errors(fn: SimpleNamespace) -> None:
    pid = str(uuid.uuid4())
    for reply in (
        invoke(fn.capture, capture_event(pid, {"merchantId": "m1", "amount": 5})),
        invoke(fn.refund, refund_event(pid, {"merchantId": "m1"})),
        invoke(fn.refund, refund_event(pid, {"merchantId": "m1", "reason": "r" * 129})),
        invoke(fn.get, get_event(pid, None)),
    ):
        assert (reply.status, reply.body["code"]) == (400, "VALIDATION_FAILED")


def test_rate_limit_and_replays_do_not_spend_quota(
    fn: SimpleNamespace, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYFN_RATELIMIT_AUTHORIZE_LIMIT", "3")
    monkeypatch.setenv("PAYFN_RATELIMIT_PERIOD_SECONDS", "3600")
    reset_payment_service()
    try:
        m = merchant()
        first_body = authorize_body(m)
        first = _authorize(fn, first_body)
        assert first.headers["x-ratelimit-limit"] == "3" and first.headers["x-ratelimit-remaining"] == "2"
        for _ in range(5):
            assert _authorize(fn, first_body).headers["idempotent-replayed"] == "true"
        assert _authorize(fn, authorize_body(m)).status == 200
        assert _authorize(fn, authorize_body(m)).status == 200
        limited_body = authorize_body(m)
        limited = _authorize(fn, limited_body)
        assert (limited.status, limited.body["code"]) == (429, "RATE_LIMIT_EXCEEDED")
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-ratelimit-limit"] == "3" and limited.headers["x-ratelimit-remaining"] == "0"
        assert _authorize(fn, first_body).status == 200, "a replay is answered even when limited"
        assert count(db, "SELECT COUNT(*) FROM payment WHERE merchant_id = %s", (m,)) == 3
        sql = "SELECT COUNT(*) FROM idempotency_record WHERE merchant_id = %s AND idempotency_key = %s"
        assert count(db, sql, (m, limited_body["idempotencyKey"])) == 0, "the 429's claim was released"
    finally:
        monkeypatch.undo()
        reset_payment_service()


def test_published_event_is_on_the_topic(fn: SimpleNamespace, db: Any, settings: Settings) -> None:
    start = end_offsets(settings.kafka_bootstrap, "payment.authorized")
    m = merchant()
    auth = _authorize(fn, authorize_body(m, amount=321, currency="GBP"))
    pid = auth.body["paymentId"]
    outbox, = rows_once(db, "SELECT event_id, published_at, attempts, last_error FROM outbox_event"
                            " WHERE aggregate_id = %s", (pid,),
                        lambda found: found[0]["published_at"] is not None)
    assert outbox["attempts"] == 1 and outbox["last_error"] is None

    record = find_record(settings.kafka_bootstrap, "payment.authorized", start, pid)
    assert record is not None
    headers = dict(record.headers)
    assert headers == {"eventId": outbox["event_id"].encode(), "eventType": b"PAYMENT_AUTHORIZED"}
    payload = payload_of(record)
    assert payload == {
        "eventId": outbox["event_id"], "eventType": "PAYMENT_AUTHORIZED", "paymentId": pid, "merchantId": m,
        "status": "REQUESTED", "amount": 321, "currency": "GBP", "occurredAt": payload["occurredAt"],
    }

    start = end_offsets(settings.kafka_bootstrap, "payment.refunded")
    invoke(fn.capture, capture_event(pid, {"merchantId": m}))
    invoke(fn.refund, refund_event(pid, {"merchantId": m, "reason": "damaged"}))
    refunded = find_record(settings.kafka_bootstrap, "payment.refunded", start, pid)
    assert refunded is not None and payload_of(refunded)["reason"] == "damaged"


def test_circuit_breaker_endpoints(fn: SimpleNamespace) -> None:
    one = invoke(fn.breaker, rest_event("GET", "/circuit-breaker/kafka-publisher"))
    both = invoke(fn.breaker, rest_event("GET", "/circuit-breaker/status"))
    assert one.status == both.status == 200
    keys = {"state", "numberOfSuccessfulCalls", "numberOfFailedCalls", "numberOfSlowCalls",
            "numberOfSlowSuccessfulCalls", "numberOfSlowFailedCalls", "numberOfBufferedCalls",
            "numberOfNotPermittedCalls", "failureRate", "slowCallRate"}
    assert keys <= set(one.body) and keys <= set(both.body["kafka-publisher"])
