"""The local scheduler against a real function host: EventBridge's event, no overlapping runs."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pymysql
import pytest
from payfn_shared.platform.config import Settings

from infra.registry.server import RegistryServer
from infra.stack.kafka_admin import ensure_topics
from tests.integration.eventflow_support import (
    listening_address,
    read_all,
    running,
    running_host,
    scheduled_flow,
)
from tests.integration.registry_support import running_registry, wait_until


@pytest.fixture
def registry(settings: Settings) -> Iterator[RegistryServer]:
    with running_registry(settings.aws_endpoint_url) as server:
        yield server


def test_scheduled_runs_get_the_eventbridge_event_and_never_overlap(
    tmp_path: Path, registry: RegistryServer,
) -> None:
    flow, output = scheduled_flow(tmp_path, sleep=0.5)
    argv = ["infra.eventsource.scheduler", "--template", str(flow.template), "--registry-url", registry.url,
            "--no-register"]
    tick = {"TEST_TICK_SECONDS": "0.2"}
    with running_host(flow, registry.url), running("scheduler", argv, tmp_path, tick) as scheduler:
        wait_until(lambda: output.exists() and len(output.read_text().splitlines()) >= 4, timeout=60)
        address = listening_address(scheduler)
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            metrics = response.read().decode()

    runs = [json.loads(line) for line in output.read_text().splitlines()]
    for earlier, later in pairwise(runs):
        assert later["start"] >= earlier["end"]
    event = runs[0]["event"]
    assert set(event) == {"version", "id", "detail-type", "source", "account", "time", "region", "resources",
                          "detail"}
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/payfn-RecorderFunction-Tick"]
    assert event["detail"] == {} and event["time"].endswith("Z")
    assert len({run["event"]["id"] for run in runs}) == len(runs)
    assert 'payfn_test_gauge{function="RecorderFunction"} 7.0' in metrics
    assert 'payfn_scheduler_skipped_total{rule="payfn-RecorderFunction-Tick"}' in metrics


def test_the_scheduler_runs_the_templates_relay_which_publishes_and_reports_its_backlog(
    tmp_path: Path, settings: Settings, registry: RegistryServer, db: pymysql.connections.Connection,
) -> None:
    topic = f"test.relay.{uuid.uuid4().hex[:10]}"
    ensure_topics(settings.kafka_bootstrap, 1, (topic,))
    event_id = str(uuid.uuid4())
    with db.cursor() as cursor:
        cursor.execute(
            "INSERT INTO outbox_event (event_id, aggregate_id, event_type, topic, partition_key, payload,"
            " created_at) VALUES (%s, %s, 'PAYMENT_AUTHORIZED', %s, %s, '{}',"
            " UTC_TIMESTAMP(3) - INTERVAL 1 MINUTE)",
            (event_id, event_id, topic, event_id))
        outbox_id = cursor.lastrowid
    host = ["infra.runtime.host", "--service", "CONSUMER-WORKER", "--registry-url", registry.url]
    scheduler = ["infra.eventsource.scheduler", "--functions", "OutboxRelayFunction",
                 "--registry-url", registry.url, "--no-register"]
    try:
        with running("host", host, tmp_path), running("scheduler", scheduler, tmp_path) as process:
            (record,) = read_all(settings, topic, expected=1, timeout=60)
            address = listening_address(process)

            def gauges() -> str | None:
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
                    text = response.read().decode()
                return text if 'payfn_outbox_backlog{function="OutboxRelayFunction"}' in text else None

            metrics = wait_until(gauges, timeout=30)
    finally:
        with db.cursor() as cursor:
            cursor.execute("DELETE FROM outbox_event WHERE id = %s", (outbox_id,))
    assert dict(record.headers)["eventId"].decode() == event_id
    assert 'payfn_outbox_oldest_age_seconds{function="OutboxRelayFunction"}' in metrics
    assert 'outcome="ok"' in metrics
