"""Pure pieces of the event flow: Lambda's Kafka event, template sources, schedules, decoding."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from payfn_shared.payments.consumers import (
    InvalidEvent,
    InvalidJson,
    UnknownEventType,
    decode_event,
    process_kafka_batch,
)

from infra.eventsource.poller import DLQ_FIELDS, dlq_payload
from infra.eventsource.scheduler import (
    Cron,
    Rate,
    ScheduleError,
    parse_schedule,
    rules_from_template,
    scheduled_event,
)
from infra.eventsource.sources import KafkaSource, group_instance_id, kafka_sources, lambda_kafka_event
from infra.sam.template import load_template


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = b"pay-1"
    timestamp: int = 1545084650987
    timestamp_type: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=lambda: [("eventId", b"ev")])


def source(kind: str = "SelfManagedKafka", arn: str | None = None) -> KafkaSource:
    return KafkaSource(
        function="F", event_name="E", service="CONSUMER-WORKER", kind=kind, topics=("payment.captured",),
        group_id="g", bootstrap_servers=("b1:9092", "b2:9092"), batch_size=100, batching_window_seconds=0,
        starting_position="TRIM_HORIZON", function_timeout=30, report_item_failures=True,
        bisect_on_error=True, max_retry_attempts=None, event_source_arn=arn)


def test_self_managed_kafka_event_is_lambdas_exact_shape() -> None:
    records = [Record("payment.captured", 1, 16, b"b"), Record("payment.captured", 0, 15, b'{"key":"value"}'),
               Record("payment.captured", 1, 15, b"a", key=None, timestamp_type=1)]
    event = lambda_kafka_event(source(), records)
    assert list(event) == ["eventSource", "bootstrapServers", "records"]
    assert event["eventSource"] == "SelfManagedKafka"
    assert event["bootstrapServers"] == "b1:9092,b2:9092"
    assert list(event["records"]) == ["payment.captured-0", "payment.captured-1"]
    assert event["records"]["payment.captured-0"] == [{
        "topic": "payment.captured", "partition": 0, "offset": 15, "timestamp": 1545084650987,
        "timestampType": "CREATE_TIME", "key": base64.b64encode(b"pay-1").decode(),
        "value": "eyJrZXkiOiJ2YWx1ZSJ9", "headers": [{"eventId": [101, 118]}],
    }]
    second = event["records"]["payment.captured-1"]
    assert [r["offset"] for r in second] == [15, 16]
    assert "key" not in second[0] and second[0]["timestampType"] == "LOG_APPEND_TIME"
    json.dumps(event)


def test_msk_event_names_its_cluster() -> None:
    arn = "arn:aws:kafka:us-east-1:123456789012:cluster/demo/abc-1"
    event = lambda_kafka_event(source("MSK", arn), [Record("payment.captured", 0, 1, b"x")])
    assert list(event)[:3] == ["eventSource", "eventSourceArn", "bootstrapServers"]
    assert event["eventSource"] == "aws:kafka" and event["eventSourceArn"] == arn


def test_template_kafka_sources_are_one_mapping_per_event() -> None:
    sources = {s.name: s for s in kafka_sources(load_template(), "127.0.0.1:9092")}
    assert set(sources) == {"LedgerConsumerFunction.Captured", "LedgerConsumerFunction.Refunded",
                            "BalanceProjectionFunction.Authorized", "BalanceProjectionFunction.Captured",
                            "BalanceProjectionFunction.Refunded"}
    captured = sources["BalanceProjectionFunction.Captured"]
    assert captured.topics == ("payment.captured",) and captured.group_id == "payfn-balance-captured"
    assert captured.bootstrap_servers == ("127.0.0.1:9092",) and captured.service == "CONSUMER-WORKER"
    assert captured.starting_position == "TRIM_HORIZON" and captured.report_item_failures
    assert len({s.group_id for s in sources.values()}) == len(sources)


def test_static_membership_id_is_stable_and_legal() -> None:
    assert group_instance_id(source(), "host a/1") == "g.host_a_1"
    assert group_instance_id(source(), "host a/1") == group_instance_id(source(), "host a/1")


def test_dlq_record_has_the_seeds_shape() -> None:
    message = json.loads(dlq_payload(Record("payment.captured", 2, 9, b"{oops"), "InvalidJson", "bad"))
    assert set(message) == set(DLQ_FIELDS)
    assert message["originalTopic"] == "payment.captured" and message["partition"] == 2
    assert message["offset"] == 9 and message["payload"] == "{oops" and message["errorType"] == "InvalidJson"


def test_rate_and_cron_expressions() -> None:
    assert parse_schedule("rate(1 minute)") == Rate(60)
    assert parse_schedule("rate(5 hours)") == Rate(5 * 3600)
    cron = parse_schedule("cron(0/15 10-12 ? * MON-FRI *)")
    assert isinstance(cron, Cron)
    saturday = datetime(2026, 11, 28, 11, 7, tzinfo=UTC)
    assert cron.next_after(saturday) == datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    monthly = parse_schedule("cron(30 2 1 * ? *)")
    assert monthly.next_after(saturday) == datetime(2026, 12, 1, 2, 30, tzinfo=UTC)
    bad_expressions = ("rate(0 minutes)", "rate(1 week)", "cron(0 12 L * ? *)", "cron(* * *)", "at(x)")
    for bad in bad_expressions:
        with pytest.raises(ScheduleError):
            parse_schedule(bad)


def test_relay_rule_runs_locally_at_the_configured_interval() -> None:
    (rule,) = rules_from_template(load_template(), {"PAYFN_RELAY_INTERVAL_SECONDS": "2.5"})
    assert rule.function == "OutboxRelayFunction" and rule.service == "CONSUMER-WORKER"
    assert rule.schedule == Rate(2.5)
    event = scheduled_event(rule, datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    assert event["time"] == "2026-01-02T03:04:05Z"
    assert event["resources"] == [f"arn:aws:events:us-east-1:123456789012:rule/{rule.name}"]
    assert {k: event[k] for k in ("version", "detail-type", "source", "detail")} == {
        "version": "0", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}


def payload(**overrides: object) -> bytes:
    base = {"eventId": "e-1", "eventType": "PAYMENT_CAPTURED", "paymentId": "p-1", "merchantId": "m",
            "status": "COMPLETED", "amount": 100, "currency": "USD", "occurredAt": "2026-01-01T00:00:00.000Z"}
    return json.dumps({**base, **overrides}).encode()


def test_decoding_names_the_kind_of_poison() -> None:
    assert decode_event(payload()).amount == 100
    with pytest.raises(InvalidJson):
        decode_event(b"{nope")
    with pytest.raises(InvalidJson):
        decode_event(b"[1]")
    with pytest.raises(UnknownEventType):
        decode_event(payload(eventType="PAYMENT_EXPLODED"))
    for bad in ({"amount": "100"}, {"amount": True}, {"amount": 0}, {"currency": "US"}, {"merchantId": None}):
        with pytest.raises(InvalidEvent):
            decode_event(payload(**bad))


def test_partial_batch_response_reports_only_the_bad_records() -> None:
    records = [Record("payment.captured", 0, 1, payload()), Record("payment.captured", 0, 2, b"{bad"),
               Record("payment.captured", 0, 3, payload(eventType="NOPE"))]
    event = lambda_kafka_event(source(), records)
    applied: list[str] = []

    class OneTransaction:
        """Stands in for the Database: runs the work with no cursor (the effect needs none)."""

        def run_in_transaction(self, work: Any) -> Any:
            return work(None)

    def effect(cursor: Any, batch: Any) -> list[str]:
        applied.extend(consumed.event_id for consumed in batch)
        return ["applied"] * len(batch)

    response = process_kafka_batch(event, OneTransaction(), effect)
    assert applied == ["e-1"]
    assert [f["itemIdentifier"] for f in response["batchItemFailures"]] == [
        {"partition": "payment.captured-0", "offset": 2}, {"partition": "payment.captured-0", "offset": 3}]
    assert [f["errorType"] for f in response["batchItemFailures"]] == ["InvalidJson", "UnknownEventType"]
