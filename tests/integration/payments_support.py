"""Helpers for the payments integration tests (plain functions, no fixtures).

The handlers are called in process with real API Gateway REST events (see
``tests/apigw.py``) against real MariaDB, Redis and Kafka. Tests that stop a
component get a private one from the supervisor's own component classes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pymysql
from payfn_shared.platform.config import Settings

from infra.stack import kafka_admin
from infra.stack.components import KafkaBroker, Redis
from infra.stack.kafka_admin import PartitionKey, TopicRecord, partitions_of, read_back_consumer, read_records
from infra.stack.mariadb import MariaDB
from infra.stack.process import free_port
from infra.stack.supervisor import Supervisor
from tests.integration.registry_support import wait_until


def merchant() -> str:
    """A fresh merchant id: its own rate-limit buckets, its own rows."""
    return f"it-{uuid.uuid4().hex[:12]}"


def authorize_body(
    merchant_id: str, amount: int = 1500, currency: str = "EUR", key: str | None = None
) -> dict[str, Any]:
    return {
        "merchantId": merchant_id,
        "amount": amount,
        "currency": currency,
        "idempotencyKey": key or f"key-{uuid.uuid4()}",
    }


Connection = pymysql.connections.Connection


def rows(connection: Connection, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with connection.cursor(pymysql.cursors.DictCursor) as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def rows_once(connection: Connection, sql: str, params: tuple[Any, ...],
              ready: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0) -> list[dict[str, Any]]:
    """``rows`` as soon as ``ready`` holds for them (and they are not empty), within ``timeout``.

    For outbox marks: ``published_at`` is written by the publisher's background
    thread up to ``PAYFN_OUTBOX_MARK_INTERVAL_MS`` after the answer, not in the request.
    """
    def found() -> list[dict[str, Any]] | None:
        result = rows(connection, sql, params)
        return result if result and ready(result) else None

    return wait_until(found, timeout=timeout, interval=0.02)


def count(connection: Connection, sql: str, params: tuple[Any, ...] = ()) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.fetchone()[0])


def end_offsets(bootstrap: str, topic: str) -> dict[PartitionKey, int]:
    consumer = read_back_consumer(bootstrap)
    try:
        return kafka_admin.end_offsets(consumer, partitions_of(consumer, [topic]))
    finally:
        consumer.close()


def find_record(
    bootstrap: str, topic: str, start: dict[PartitionKey, int], key: str, wait_s: float = 10.0
) -> TopicRecord | None:
    """The first record with ``key`` written after ``start`` offsets (None if none arrives)."""
    consumer = read_back_consumer(bootstrap)
    try:
        for batch in read_records(consumer, start, wait_s):
            for record in batch:
                if record.key == key.encode():
                    return record
        return None
    finally:
        consumer.close()


def payload_of(record: TopicRecord) -> dict[str, Any]:
    return json.loads(record.value)


@contextmanager
def private_stack(base: Settings, root: Path) -> Iterator[Supervisor]:
    """MariaDB, Redis and a Kafka broker of our own on free ports (stopped at the end)."""
    settings = replace(
        base,
        stack_dir=str(root),
        db_port=free_port(),
        redis_port=free_port(),
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
    )
    supervisor = Supervisor(settings, components=[MariaDB, Redis, KafkaBroker])
    try:
        supervisor.up()
        yield supervisor
    finally:
        supervisor.down()
