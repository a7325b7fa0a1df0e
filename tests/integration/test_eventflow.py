"""The Kafka event flow end to end: poller → Invoke API → consumer functions → MariaDB.

Real processes (function host, event-source poller, registry) against the shared
broker and database; each test owns its topics, groups, DLQ and merchant ids.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from payfn_shared.payments.events import EVENT_AUTHORIZED, EVENT_CAPTURED
from payfn_shared.platform.config import Settings

from infra.registry.server import RegistryServer
from infra.sam.template import REPO_ROOT
from tests.integration.eventflow_support import (
    Flow,
    committed,
    new_flow,
    payment_event,
    poller_argv,
    produce,
    read_all,
    running,
    running_host,
)
from tests.integration.registry_support import running_registry, wait_until

CONSUMER_CODE = REPO_ROOT / "functions" / "consumer"
DLQ_KEYS = {"originalTopic", "partition", "offset", "payload", "errorType", "errorMessage", "timestamp"}


@pytest.fixture
def registry(settings: Settings) -> Iterator[RegistryServer]:
    with running_registry(settings.aws_endpoint_url) as server:
        yield server


def balance(db: pymysql.connections.Connection, merchant: str) -> tuple[int, int, int] | None:
    with db.cursor() as cursor:
        cursor.execute("SELECT authorized_total, captured_total, refunded_total FROM merchant_balance"
                       " WHERE merchant_id = %s AND currency = 'USD'", (merchant,))
        row = cursor.fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def processed_count(db: pymysql.connections.Connection, event_ids: list[str]) -> int:
    with db.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM processed_event WHERE consumer = 'balance-projection'"
                       " AND FIND_IN_SET(event_id, %s)", (",".join(event_ids),))
        return int(cursor.fetchone()[0])


def committed_total(settings: Settings, flow: Flow) -> int:
    return sum(offset or 0 for offset in committed(settings, flow.group, flow.topic).values())


@pytest.fixture
def shop(db: pymysql.connections.Connection) -> Iterator[str]:
    """A merchant of this test only; its projection row is removed afterwards so that
    reconciliation never sees a balance without payments left behind by a test."""
    merchant = f"test-{uuid.uuid4().hex[:12]}"
    yield merchant
    with db.cursor() as cursor:
        cursor.execute("DELETE FROM merchant_balance WHERE merchant_id = %s", (merchant,))


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def test_poison_records_go_to_the_dlq_and_the_partition_keeps_flowing(
    tmp_path: Path, settings: Settings, registry: RegistryServer, db: pymysql.connections.Connection,
    shop: str,
) -> None:
    flow = new_flow(tmp_path, settings, "balance.handler", code=CONSUMER_CODE)
    unknown = payment_event(EVENT_AUTHORIZED, shop, 5)
    unknown["eventType"] = "PAYMENT_EXPLODED"
    produce(settings, flow.topic, [
        encode(payment_event(EVENT_AUTHORIZED, shop, 100)),
        b"{not json",
        encode(unknown),
        encode(payment_event(EVENT_CAPTURED, shop, 100)),
    ])
    with running_host(flow, registry.url), running("poller", poller_argv(flow, registry.url), tmp_path,
                                                   flow.env):
        wait_until(lambda: balance(db, shop) == (100, 100, 0), timeout=60)
        dead = read_all(settings, flow.dlq, expected=2)
        produce(settings, flow.topic, [encode(payment_event(EVENT_AUTHORIZED, shop, 7))])
        wait_until(lambda: balance(db, shop) == (107, 100, 0), timeout=30)
        wait_until(lambda: committed_total(settings, flow) == 5, timeout=30)

    messages = [json.loads(record.value) for record in dead]
    assert all(set(message) == DLQ_KEYS for message in messages)
    by_type = {message["errorType"]: message for message in messages}
    assert set(by_type) == {"InvalidJson", "UnknownEventType"}
    assert by_type["InvalidJson"]["payload"] == "{not json"
    assert by_type["InvalidJson"]["originalTopic"] == flow.topic
    assert by_type["InvalidJson"]["offset"] == 1
    assert by_type["UnknownEventType"]["offset"] == 2
    assert "PAYMENT_EXPLODED" in by_type["UnknownEventType"]["errorMessage"]
    assert all(record.key == b"k" for record in dead)


def test_environment_killed_mid_batch_redelivers_without_applying_twice(
    tmp_path: Path, settings: Settings, registry: RegistryServer, db: pymysql.connections.Connection,
    shop: str,
) -> None:
    marker = tmp_path / "crashed"
    flow = new_flow(tmp_path, settings, "crash_once.handler", variables={"CRASH_MARKER": str(marker)})
    events = [payment_event(EVENT_AUTHORIZED, shop, 10 + i) for i in range(10)]
    produce(settings, flow.topic, [encode(e) for e in events])
    poller = poller_argv(flow, registry.url)
    with running_host(flow, registry.url) as host, running("poller", poller, tmp_path, flow.env):
        wait_until(lambda: balance(db, shop) == (sum(10 + i for i in range(10)), 0, 0), timeout=60)
        wait_until(lambda: committed_total(settings, flow) == 10, timeout=30)
        host_log = host.log()
    assert marker.exists()
    assert "Runtime.ExitError" in host_log
    assert processed_count(db, [e["eventId"] for e in events]) == 10


def test_poller_killed_mid_batch_commits_nothing_and_the_batch_is_redelivered(
    tmp_path: Path, settings: Settings, registry: RegistryServer, db: pymysql.connections.Connection,
    shop: str,
) -> None:
    flow = new_flow(tmp_path, settings, "slow.handler", variables={"SLOW_SECONDS": "0.25"})
    events = [payment_event(EVENT_AUTHORIZED, shop, 1) for _ in range(12)]
    produce(settings, flow.topic, [encode(e) for e in events])
    with running_host(flow, registry.url):
        with running("poller", poller_argv(flow, registry.url), tmp_path, flow.env) as poller:
            wait_until(lambda: (balance(db, shop) or (0, 0, 0))[0] >= 2, timeout=60)
            poller.stop(signal.SIGKILL)
        partly = balance(db, shop)
        assert partly is not None and 2 <= partly[0] < 12
        assert all(not offset for offset in committed(settings, flow.group, flow.topic).values())
        with running("poller-again", poller_argv(flow, registry.url), tmp_path, flow.env):
            wait_until(lambda: balance(db, shop) == (12, 0, 0), timeout=60)
            wait_until(lambda: committed_total(settings, flow) == 12, timeout=30)
    assert processed_count(db, [e["eventId"] for e in events]) == 12
