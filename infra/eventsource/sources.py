"""The template's Kafka event sources (``SelfManagedKafka`` / ``MSK`` events) and Lambda's Kafka event.

Each event of a function is one event-source mapping, read with the properties
AWS gives it (defaults as documented for Kafka mappings where locally sensible).
:func:`lambda_kafka_event` builds the payload exactly as Lambda delivers it, so a
handler that works here works unchanged on AWS:

``{"eventSource": "SelfManagedKafka" | "aws:kafka", ["eventSourceArn": …,]
"bootstrapServers": "h1:9092,h2:9092", "records": {"<topic>-<partition>": [{topic,
partition, offset, timestamp, timestampType, key, value, headers}]}}`` with key and
value base64-encoded and each header as ``{name: [byte, …]}``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from infra.sam.template import Template, TemplateError

KAFKA_EVENT_TYPES = ("SelfManagedKafka", "MSK")
EVENT_SOURCE_NAME = {"SelfManagedKafka": "SelfManagedKafka", "MSK": "aws:kafka"}
TIMESTAMP_TYPES = {0: "CREATE_TIME", 1: "LOG_APPEND_TIME"}
REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"


class KafkaRecord(Protocol):
    """What the event needs of a consumed record (kafka-python's ``ConsumerRecord`` has it)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class KafkaSource:
    """One Kafka event-source mapping of one function."""

    function: str
    event_name: str
    service: str
    kind: str
    topics: tuple[str, ...]
    group_id: str
    bootstrap_servers: tuple[str, ...]
    batch_size: int
    batching_window_seconds: float
    starting_position: str
    function_timeout: float
    report_item_failures: bool
    bisect_on_error: bool
    max_retry_attempts: int | None
    event_source_arn: str | None = None
    enabled: bool = True

    @property
    def name(self) -> str:
        return f"{self.function}.{self.event_name}"


def _bootstrap(value: Any, default: str) -> tuple[str, ...]:
    """KafkaBootstrapServers as the template resolves it: a list, ``!Split``, or comma-joined strings."""
    if value is None:
        return tuple(s.strip() for s in default.split(",") if s.strip())
    if isinstance(value, Mapping) and "Fn::Split" in value:
        separator, text = value["Fn::Split"]
        return tuple(s.strip() for s in str(text).split(str(separator)) if s.strip())
    items = value if isinstance(value, list) else [value]
    return tuple(s.strip() for item in items for s in str(item).split(",") if s.strip())


def kafka_sources(template: Template, default_bootstrap: str) -> list[KafkaSource]:
    """Every ``SelfManagedKafka`` / ``MSK`` event in the template.

    MSK events name a cluster ARN (``Stream``); locally the cluster is the
    configured broker, so their bootstrap servers are ``default_bootstrap``.
    """
    sources = []
    for spec in template.functions():
        for event in spec.events:
            if event.type not in KAFKA_EVENT_TYPES:
                continue
            props = event.properties
            if not spec.service:
                raise TemplateError(f"{spec.logical_id}: a Kafka-triggered function needs a service tag")
            topics = tuple(str(t) for t in props.get("Topics", []))
            if not topics:
                raise TemplateError(f"{spec.logical_id}.{event.name}: Topics is required")
            group_id = props.get("ConsumerGroupId") or (
                props.get("SelfManagedKafkaEventSourceConfig", {}).get("ConsumerGroupId")
                or props.get("AmazonManagedKafkaEventSourceConfig", {}).get("ConsumerGroupId")
                or spec.logical_id)
            retries = props.get("MaximumRetryAttempts")
            sources.append(KafkaSource(
                function=spec.logical_id,
                event_name=event.name,
                service=spec.service,
                kind=event.type,
                topics=topics,
                group_id=str(group_id),
                bootstrap_servers=_bootstrap(
                    props.get("KafkaBootstrapServers") if event.type == "SelfManagedKafka" else None,
                    default_bootstrap),
                batch_size=int(props.get("BatchSize", 100)),
                batching_window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0.5)),
                starting_position=str(props.get("StartingPosition", "LATEST")).upper(),
                function_timeout=spec.timeout,
                report_item_failures=REPORT_BATCH_ITEM_FAILURES in props.get("FunctionResponseTypes", []),
                bisect_on_error=bool(props.get("BisectBatchOnFunctionError", True)),
                max_retry_attempts=None if retries is None or int(retries) < 0 else int(retries),
                event_source_arn=str(props["Stream"]) if event.type == "MSK" and "Stream" in props else None,
                enabled=bool(props.get("Enabled", True)),
            ))
    return sources


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def lambda_record(record: KafkaRecord) -> dict[str, Any]:
    """One record as Lambda writes it (key/value omitted when null, as Lambda does)."""
    item: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
        "timestampType": TIMESTAMP_TYPES.get(record.timestamp_type, "CREATE_TIME"),
    }
    if record.key is not None:
        item["key"] = _b64(record.key)
    if record.value is not None:
        item["value"] = _b64(record.value)
    item["headers"] = [{name: list(value or b"")} for name, value in record.headers]
    return item


def lambda_kafka_event(source: KafkaSource, records: Sequence[KafkaRecord]) -> dict[str, Any]:
    """The Lambda Kafka event for ``records`` (grouped by ``topic-partition``, in offset order)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        grouped.setdefault(f"{record.topic}-{record.partition}", []).append(lambda_record(record))
    event: dict[str, Any] = {"eventSource": EVENT_SOURCE_NAME[source.kind]}
    if source.kind == "MSK" and source.event_source_arn:
        event["eventSourceArn"] = source.event_source_arn
    event["bootstrapServers"] = ",".join(source.bootstrap_servers)
    event["records"] = grouped
    return event


_INSTANCE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def group_instance_id(source: KafkaSource, instance: str) -> str:
    """Static membership id: stable per (group, poller instance), only Kafka's allowed characters."""
    return _INSTANCE_ID_CHARS.sub("_", f"{source.group_id}.{instance}")[:249]
