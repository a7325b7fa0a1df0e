"""Both idempotency stores behind the authorize function: replay, reuse, races and expiry.

The store is chosen the way a deployment chooses it (``PAYFN_IDEMPOTENCY_STORE``);
expiry runs with a 1 s TTL to show that the payment's unique key still has the
last word once a record is gone.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

import pytest
from payfn_shared.payments.service import get_payment_service, reset_payment_service
from payfn_shared.payments.validation import AuthorizeRequest
from payfn_shared.platform.idempotency import (
    MariaDbIdempotencyStore,
    RedisIdempotencyStore,
    request_hash,
    utc_now,
)

from tests.apigw import HttpReply, authorize_event, invoke, load_function
from tests.integration.payments_support import authorize_body, count, merchant

STORES = {"mariadb": MariaDbIdempotencyStore, "redis": RedisIdempotencyStore}


@pytest.fixture(params=sorted(STORES))
def store_name(request: pytest.FixtureRequest, stack: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("PAYFN_IDEMPOTENCY_STORE", request.param)
    reset_payment_service()
    yield request.param
    monkeypatch.undo()
    reset_payment_service()


@pytest.fixture(scope="module")
def authorize(stack: Any) -> Any:
    return load_function("authorize")


def _kind(reply: HttpReply) -> str:
    if reply.status == 200:
        return "replay" if reply.headers.get("idempotent-replayed") == "true" else "created"
    return f"{reply.status} {reply.body['code']}"


def test_store_is_selected_by_configuration(store_name: str) -> None:
    assert isinstance(get_payment_service().idempotency, STORES[store_name])


def test_replay_reuse_and_in_flight(store_name: str, authorize: Any, db: Any) -> None:
    m = merchant()
    body = authorize_body(m)
    first = invoke(authorize, authorize_event(body))
    replay = invoke(authorize, authorize_event(body))
    assert _kind(first) == "created" and _kind(replay) == "replay" and replay.body == first.body
    reused = invoke(authorize, authorize_event({**body, "currency": "USD"}))
    assert _kind(reused) == "422 IDEMPOTENCY_KEY_REUSED"
    assert reused.body["paymentId"] == first.body["paymentId"]

    pending = authorize_body(m)
    key = pending["idempotencyKey"]
    canonical = AuthorizeRequest(m, pending["amount"], pending["currency"], key).canonical()
    store = get_payment_service().idempotency
    assert store.claim(m, key, request_hash(canonical), "p", utc_now()) is None
    assert _kind(invoke(authorize, authorize_event(pending))) == "409 REQUEST_IN_PROGRESS"
    assert count(db, "SELECT COUNT(*) FROM payment WHERE merchant_id = %s", (m,)) == 1


def test_race_on_one_key(store_name: str, authorize: Any, db: Any) -> None:
    m = merchant()
    body = authorize_body(m)
    barrier = Barrier(40)

    def one(_: int) -> str:
        barrier.wait()
        return _kind(invoke(authorize, authorize_event(body)))

    with ThreadPoolExecutor(max_workers=40) as pool:
        kinds = Counter(pool.map(one, range(40)))
    assert kinds["created"] == 1 and set(kinds) <= {"created", "replay", "409 REQUEST_IN_PROGRESS"}, kinds
    assert count(db, "SELECT COUNT(*) FROM payment WHERE merchant_id = %s", (m,)) == 1


def test_expired_record_still_cannot_make_a_second_payment(
    store_name: str, authorize: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAYFN_IDEMPOTENCY_TTL_SECONDS", "1")
    reset_payment_service()
    m = merchant()
    body = authorize_body(m)
    first = invoke(authorize, authorize_event(body))
    assert _kind(first) == "created"
    time.sleep(1.2)
    again = invoke(authorize, authorize_event(body))
    assert _kind(again) == "replay" and again.body["paymentId"] == first.body["paymentId"]
    time.sleep(1.2)
    other = invoke(authorize, authorize_event({**body, "amount": body["amount"] + 1}))
    assert _kind(other) == "422 IDEMPOTENCY_KEY_REUSED" and other.body["paymentId"] == first.body["paymentId"]
    assert count(db, "SELECT COUNT(*) FROM payment WHERE merchant_id = %s", (m,)) == 1
