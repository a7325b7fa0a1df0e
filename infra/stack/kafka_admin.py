"""Kafka administration and read-back over the plain Kafka protocol (librdkafka, any broker).

Topics are created (and their retention aligned) at start-up; drills and tests read
back what reached the broker without joining a group: partitions, end offsets, a
group's committed offsets and the records after given offsets. The same client family
(confluent-kafka) as the publisher, so one library's semantics hold everywhere but in
the event-source poller (why: its module docstring).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from payfn_shared.payments.topics import ALL_TOPICS

log = logging.getLogger(__name__)

RETENTION_MS = "retention.ms"
#: librdkafka's own log lines up to this syslog level only (2: critical): a broker that is
#: not up yet is what ``broker_ready`` asks about, not something to log on every try.
CLIENT_LOG_LEVEL = 2

#: A partition as the read-back helpers key it.
PartitionKey = tuple[str, int]


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "client.id": "payfn-admin",
                        "log_level": CLIENT_LOG_LEVEL})


def broker_ready(bootstrap: str, timeout: float = 1.5) -> bool:
    """A metadata round trip: the broker answers the Kafka protocol."""
    try:
        _admin(bootstrap).list_topics(timeout=timeout)
        return True
    except (KafkaException, ValueError):
        return False


def ensure_topics(bootstrap: str, partitions: int, topics: tuple[str, ...] = ALL_TOPICS, *,
                  retention_ms: int | None = None, alter_existing: bool = True) -> list[str]:
    """Create the missing topics; returns the ones created (none on a second run).

    With ``retention_ms``, new topics get it as ``retention.ms`` and, unless
    ``alter_existing`` is false, existing topics of ``topics`` whose retention differs
    are altered to it: topics created before the retention existed would otherwise
    keep every record forever. A broker that refuses the change costs a warning, not
    the caller's start-up.
    """
    configs = {} if retention_ms is None else {RETENTION_MS: str(retention_ms)}
    admin = _admin(bootstrap)
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=dict(configs))
              for topic in topics if topic not in existing]
    created = []
    if wanted:
        for topic, future in admin.create_topics(wanted, request_timeout=10).items():
            try:
                future.result()
                created.append(topic)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    if configs and alter_existing:
        _align_configs(admin, [topic for topic in topics if topic not in created], configs)
    return created


def _align_configs(admin: AdminClient, topics: list[str], configs: dict[str, str]) -> None:
    """Set ``configs`` on the ``topics`` whose effective values differ; one warning if refused.

    The described values include the broker's defaults, so an already matching topic
    is left alone; the change is incremental (the topic's other settings stay). Each
    topic answers on its own future, so a refusal of one (an unknown topic) is
    collected with the others into the one warning.
    """
    if not topics:
        return
    refused: dict[str, str] = {}
    stale: list[str] = []
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic) for topic in topics],
                                       request_timeout=10)
    for resource, future in described.items():
        try:
            entries = future.result()
        except KafkaException as exc:
            refused[resource.name] = exc.args[0].str()
            continue
        if any(entries.get(key) is None or entries[key].value != value for key, value in configs.items()):
            stale.append(resource.name)
    if stale:
        entries = [ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                   for key, value in configs.items()]
        altered = admin.incremental_alter_configs(
            [ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries) for topic in stale],
            request_timeout=10)
        for resource, future in altered.items():
            try:
                future.result()
            except KafkaException as exc:
                refused[resource.name] = exc.args[0].str()
    if refused:
        log.warning("the Kafka broker did not apply %s to existing topics (they keep their settings): %s",
                    configs, "; ".join(f"{topic}: {reason}" for topic, reason in refused.items()))


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """A record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @classmethod
    def from_message(cls, message: Message) -> TopicRecord:
        return cls(message.topic(), message.partition(), message.offset(), message.key(), message.value(),
                   list(message.headers() or ()))


def read_back_consumer(bootstrap: str, group: str = "payfn-read-back") -> Consumer:
    """A consumer for assigned reads and committed-offset lookups: it never joins ``group``."""
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                     "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                     "log_level": CLIENT_LOG_LEVEL})


def partitions_of(consumer: Consumer, topics: Iterable[str], timeout: float = 10.0) -> list[PartitionKey]:
    """Every partition of ``topics`` the broker knows (none for a topic it does not have)."""
    found: list[PartitionKey] = []
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is not None and metadata.error is None:
            found.extend((topic, partition) for partition in sorted(metadata.partitions))
    return found


def watermarks(consumer: Consumer, partitions: Iterable[PartitionKey],
               timeout: float = 10.0) -> dict[PartitionKey, tuple[int, int]]:
    """Each partition's (low, high) watermark: its first offset still held and its next offset."""
    return {key: consumer.get_watermark_offsets(TopicPartition(*key), timeout=timeout) for key in partitions}


def end_offsets(consumer: Consumer, partitions: Iterable[PartitionKey],
                timeout: float = 10.0) -> dict[PartitionKey, int]:
    """The offset the next record of each partition will get (its high watermark)."""
    return {key: high for key, (_, high) in watermarks(consumer, partitions, timeout).items()}


def committed_offsets(bootstrap: str, group: str, topics: Iterable[str],
                      timeout: float = 10.0) -> dict[PartitionKey, int | None]:
    """``group``'s committed offset per partition of ``topics`` (None: nothing committed)."""
    consumer = read_back_consumer(bootstrap, group)
    try:
        partitions = [TopicPartition(*key) for key in partitions_of(consumer, topics, timeout)]
        if not partitions:
            return {}
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
                for tp in consumer.committed(partitions, timeout=timeout)}
    finally:
        consumer.close()


def read_records(consumer: Consumer, starts: Mapping[PartitionKey, int],
                 timeout: float) -> Iterator[list[TopicRecord]]:
    """Batches of the records after ``starts`` (each record once), for up to ``timeout`` seconds.

    A batch may be empty (nothing arrived within half a second); the caller stops
    reading when it has what it wants. Records are keyed by their offsets, so a
    partition the client re-reads (its reset after an out-of-range answer) never
    yields one record twice.
    """
    consumer.assign([TopicPartition(*key, offset) for key, offset in starts.items()])
    seen: set[tuple[str, int, int]] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = []
        for message in consumer.consume(5000, 0.5):
            if message.error() is not None:
                if message.error().fatal():
                    raise KafkaException(message.error())
                continue
            record = TopicRecord.from_message(message)
            if (record.topic, record.partition, record.offset) not in seen:
                seen.add((record.topic, record.partition, record.offset))
                batch.append(record)
        yield batch


def read_to_end(consumer: Consumer, partitions: Iterable[PartitionKey], timeout: float,
                each: Callable[[TopicRecord], object]) -> bool:
    """Hand every record the partitions hold now to ``each``; False if ``timeout`` ran out first."""
    wanted = list(partitions)
    left = {key: high for key, (low, high) in watermarks(consumer, wanted).items() if high > low}
    if not left:
        return True
    for batch in read_records(consumer, dict.fromkeys(wanted, OFFSET_BEGINNING), timeout):
        for record in batch:
            each(record)
            if record.offset + 1 >= left.get((record.topic, record.partition), 0):
                left.pop((record.topic, record.partition), None)
        if not left:
            return True
    return False
