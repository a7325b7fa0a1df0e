"""The poller's consumer side (``infra.eventsource.reader``) against a fake librdkafka consumer.

The fake keeps what the reader relies on: a fetch hands out records up to the end
and then one partition-EOF event, a paused partition is not fetched, pausing drops
what was fetched but not handed out, a seek sets the fetch position, rebalance
callbacks run inside ``poll``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from infra.eventsource import reader as reader_module
from infra.eventsource.poller import KafkaPoller, PollerConfig, PollerMetrics
from infra.eventsource.reader import GroupReader, TopicKey, record_from_message
from infra.eventsource.sources import KafkaRecord, KafkaSource, lambda_kafka_event

TOPIC = "payment.captured"
IDLE = (0.001, 0.004)


@dataclass
class FakeMessage:
    """confluent-kafka's Message: a record, or an event when ``err`` is set."""

    topic_: str
    partition_: int
    offset_: int
    value_: bytes | None = None
    key_: bytes | None = b"k"
    timestamp_: tuple[int, int] = (TIMESTAMP_CREATE_TIME, 1545084650987)
    headers_: list[tuple[str, bytes | None]] | None = None
    err: KafkaError | None = None

    def error(self) -> KafkaError | None:
        return self.err

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def timestamp(self) -> tuple[int, int]:
        return self.timestamp_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self.headers_


@dataclass
class FakeConsumer:
    """The part of confluent-kafka's Consumer the reader uses, over in-memory partition logs."""

    logs: dict[TopicKey, list[bytes]]
    commits: dict[TopicKey, int] = field(default_factory=dict)
    refuse_commits: bool = False
    fetches: int = 0
    calls: list[str] = field(default_factory=list)
    assignment: dict[TopicKey, int] = field(default_factory=dict)
    paused: set[TopicKey] = field(default_factory=set)
    handed_out: dict[TopicKey, int] = field(default_factory=dict)
    eof_sent: set[TopicKey] = field(default_factory=set)
    queue: list[FakeMessage] = field(default_factory=list)
    callbacks: dict[str, Callable[..., None]] = field(default_factory=dict)
    pending_assignment: list[TopicKey] | None = None
    #: Partitions whose next fetch the broker refuses with OFFSET_OUT_OF_RANGE.
    refuse_fetch: set[TopicKey] = field(default_factory=set)
    #: Partitions librdkafka stopped after an offset error (until assigned again).
    stopped: set[TopicKey] = field(default_factory=set)

    # -- group ---------------------------------------------------------------------------

    def subscribe(self, topics: list[str], on_assign: Callable[..., None], on_revoke: Callable[..., None],
                  on_lost: Callable[..., None]) -> None:
        self.callbacks = {"assign": on_assign, "revoke": on_revoke}
        self.pending_assignment = sorted(self.logs)

    def rebalance(self, partitions: list[TopicKey]) -> None:
        """The next poll revokes everything, then assigns ``partitions`` (eager protocol)."""
        self.pending_assignment = partitions

    def _serve_rebalance(self) -> None:
        if self.pending_assignment is None:
            return
        partitions, self.pending_assignment = self.pending_assignment, None
        if self.assignment:
            self.callbacks["revoke"](self, [TopicPartition(t, p) for t, p in self.assignment])
            self.assignment, self.paused, self.queue = {}, set(), []
        self.callbacks["assign"](self, [TopicPartition(t, p) for t, p in partitions])

    def assign(self, partitions: list[TopicPartition]) -> None:
        assert all(tp.offset >= 0 for tp in partitions), "the reader assigns absolute offsets"
        self.assignment = {(tp.topic, tp.partition): tp.offset for tp in partitions}
        self.handed_out = dict(self.assignment)
        self.eof_sent = set()
        self.stopped = set()
        self.queue = []
        self.calls.append("assign " + ",".join(f"{tp.partition}@{tp.offset}" for tp in partitions))

    # -- fetching ------------------------------------------------------------------------

    def _fetch(self) -> None:
        active = [key for key in self.assignment if key not in self.paused | self.stopped]
        if not active:
            return
        self.fetches += 1
        for key in active:
            if key in self.refuse_fetch:
                self.refuse_fetch.discard(key)
                self.stopped.add(key)
                refused = KafkaError(KafkaError._AUTO_OFFSET_RESET)
                self.queue.append(FakeMessage(key[0], key[1], self.assignment[key], err=refused))
                continue
            position = self.assignment[key]
            log = self.logs[key]
            for offset in range(position, len(log)):
                self.queue.append(FakeMessage(key[0], key[1], offset, log[offset]))
            self.assignment[key] = len(log)
            if key not in self.eof_sent:
                end = KafkaError(KafkaError._PARTITION_EOF)
                self.queue.append(FakeMessage(key[0], key[1], len(log), err=end))
                self.eof_sent.add(key)

    def _hand_out(self, count: int) -> list[FakeMessage]:
        out, self.queue = self.queue[:count], self.queue[count:]
        for message in out:
            if message.err is None:
                self.handed_out[(message.topic_, message.partition_)] = message.offset_ + 1
        return out

    def poll(self, timeout: float) -> FakeMessage | None:
        self._serve_rebalance()
        if not self.queue:
            self._fetch()
        if not self.queue:
            time.sleep(timeout)
            return None
        return self._hand_out(1)[0]

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        return self._hand_out(num_messages)

    def _drop_fetched(self, keys: Collection[TopicKey]) -> None:
        self.queue = [m for m in self.queue if (m.topic_, m.partition_) not in keys]
        for key in keys:
            self.assignment[key] = self.handed_out[key]
            self.eof_sent.discard(key)

    def pause(self, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self.calls.append("pause")
        self.paused |= keys
        self._drop_fetched(keys)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append("resume")
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def seek(self, partition: TopicPartition) -> None:
        key = (partition.topic, partition.partition)
        if key in self.stopped:
            raise KafkaException(KafkaError(KafkaError._STATE))
        self.calls.append(f"seek {partition.partition}@{partition.offset}")
        self._drop_fetched([key])
        self.assignment[key] = self.handed_out[key] = partition.offset

    # -- offsets -------------------------------------------------------------------------

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.calls.append("latest")
        return [TopicPartition(tp.topic, tp.partition, len(self.logs[(tp.topic, tp.partition)]))
                for tp in partitions]

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self._committed(tp))
                for tp in partitions]

    def _committed(self, partition: TopicPartition) -> int:
        return self.commits.get((partition.topic, partition.partition), OFFSET_INVALID)

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float | None = None,
                              cached: bool = False) -> tuple[int, int]:
        return 0, len(self.logs[(partition.topic, partition.partition)])

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        if self.refuse_commits:
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
        for tp in offsets:
            self.commits[(tp.topic, tp.partition)] = tp.offset
        return offsets

    def close(self) -> None:
        self.calls.append("close")


class Buffer:
    """Stands in for the poller as the reader's listener: records handed out, not yet delivered."""

    def __init__(self) -> None:
        self.records: list[KafkaRecord] = []
        self.revoked_partitions: list[TopicKey] = []

    def release(self, partitions: Collection[TopicKey]) -> dict[TopicKey, int]:
        first: dict[TopicKey, int] = {}
        for record in [r for r in self.records if (r.topic, r.partition) in partitions]:
            key = (record.topic, record.partition)
            first[key] = min(record.offset, first.get(key, record.offset))
            self.records.remove(record)
        return first

    def revoked(self, partitions: Collection[TopicKey]) -> None:
        self.revoked_partitions.extend(partitions)


def values(n: int, prefix: str = "v") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


def reader(consumer: FakeConsumer, position: str = "TRIM_HORIZON",
           listener: Buffer | None = None) -> GroupReader:
    return GroupReader(consumer, [TOPIC], position, listener or Buffer(), IDLE, "F.E")  # type: ignore[arg-type]


def read_until_paused(group: GroupReader, limit: int = 50) -> list[KafkaRecord]:
    records: list[KafkaRecord] = []
    for _ in range(limit):
        records.extend(group.fetch(100, 0.01))
        if group.paused:
            return records
    raise AssertionError("the reader never paused")


def test_assignment_starts_at_the_commit_else_as_the_starting_position_says() -> None:
    logs = {(TOPIC, 0): values(5), (TOPIC, 1): values(3), (TOPIC, 2): values(4)}
    earliest = reader(FakeConsumer(logs, commits={(TOPIC, 0): 2}))
    records = read_until_paused(earliest)
    assert earliest.positions == {(TOPIC, 0): 5, (TOPIC, 1): 3, (TOPIC, 2): 4}
    assert sorted((r.partition, r.offset) for r in records) == [
        (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)]
    latest = reader(FakeConsumer(logs, commits={(TOPIC, 0): 2}), position="LATEST")
    assert [(r.partition, r.offset) for r in read_until_paused(latest)] == [(0, 2), (0, 3), (0, 4)]


def test_a_caught_up_reader_pauses_and_does_not_fetch_while_nothing_comes() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(2), (TOPIC, 1): []})
    group = reader(consumer)
    assert len(read_until_paused(group)) == 2
    fetches = consumer.fetches
    for _ in range(5):
        assert group.fetch(100, 0.005) == []
    assert consumer.fetches == fetches and group.paused
    assert consumer.calls.count("latest") >= 2 and "resume" not in consumer.calls
    assert group.idle_delay == IDLE[1]  # grown to the max while nothing came


def test_new_records_resume_at_the_position_and_reset_the_idle_backoff() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(2), (TOPIC, 1): values(1)})
    group = reader(consumer)
    read_until_paused(group)
    group.fetch(100, 0.01)
    consumer.logs[(TOPIC, 1)].extend([b"late-1", b"late-2"])
    records: list[KafkaRecord] = []
    for _ in range(50):
        records = group.fetch(100, 0.01)
        if records:
            break
    assert [(r.partition, r.offset, r.value) for r in records] == [(1, 1, b"late-1"), (1, 2, b"late-2")]
    resumed = consumer.calls.index("resume")
    assert consumer.calls[resumed + 1:resumed + 3] == ["seek 0@2", "seek 1@1"]
    assert not group.paused and group.idle_delay == IDLE[0]


def test_records_fetched_while_pausing_are_read_again_after_the_resume() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(1)})
    group = reader(consumer)
    read_until_paused(group)
    consumer.resume([TopicPartition(TOPIC, 0)])  # a fetch slips in before the pause takes effect
    consumer.logs[(TOPIC, 0)].append(b"raced")
    consumer._fetch()
    consumer.pause([TopicPartition(TOPIC, 0)])  # …and the pause drops it
    records: list[KafkaRecord] = []
    for _ in range(50):
        records = group.fetch(100, 0.01)
        if records:
            break
    assert [(r.offset, r.value) for r in records] == [(1, b"raced")]


def test_records_buffered_at_a_rebalance_are_fetched_again_from_their_first_offset() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(6), (TOPIC, 1): values(2)}, commits={(TOPIC, 1): 1})
    buffer = Buffer()
    group = reader(consumer, listener=buffer)
    first = group.fetch(3, 0.01)
    assert [(r.partition, r.offset) for r in first] == [(0, 0), (0, 1), (0, 2)]
    buffer.records.extend(first[1:])  # offset 0 was delivered (not committed), 1 and 2 are buffered
    consumer.rebalance([(TOPIC, 0), (TOPIC, 1)])
    again = read_until_paused(group)
    assert buffer.records == [] and buffer.revoked_partitions == [(TOPIC, 0), (TOPIC, 1)]
    assert sorted((r.partition, r.offset) for r in again) == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 1)]


def test_a_partition_that_moved_away_does_not_keep_its_rewind() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(4), (TOPIC, 1): values(2)}, commits={(TOPIC, 0): 3})
    buffer = Buffer()
    group = reader(consumer, listener=buffer)
    buffer.records.extend(group.fetch(2, 0.01))
    consumer.rebalance([(TOPIC, 1)])
    group.fetch(100, 0.01)
    consumer.rebalance([(TOPIC, 0), (TOPIC, 1)])
    again = read_until_paused(group)
    assert [r.offset for r in again if r.partition == 0] == [3]  # from the commit, not the old buffer


def test_a_rebalance_while_paused_leaves_the_new_assignment_fetching() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(1), (TOPIC, 1): values(1)})
    group = reader(consumer)
    read_until_paused(group)
    consumer.logs[(TOPIC, 1)].append(b"after")
    consumer.commits[(TOPIC, 1)] = 1
    consumer.rebalance([(TOPIC, 1)])
    records = read_until_paused(group)
    assert [(r.partition, r.offset, r.value) for r in records] == [(1, 1, b"after")]
    pauses = [call for call in consumer.calls if call in ("pause", "resume")]
    assert pauses[-3:] == ["pause", "resume", "pause"]  # lifted while revoking, the new assignment fetched


def test_commit_refused_by_a_rebalance_commits_nothing() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(1)})
    group = reader(consumer)
    assert group.commit({(TOPIC, 0): 1}) == [(TOPIC, 0)] and consumer.commits == {(TOPIC, 0): 1}
    consumer.refuse_commits = True
    assert group.commit({(TOPIC, 0): 2}) == [] and consumer.commits == {(TOPIC, 0): 1}


def test_a_fatal_consumer_error_is_raised() -> None:
    consumer = FakeConsumer({(TOPIC, 0): []})
    group = reader(consumer)
    read_until_paused(group)
    consumer.paused.clear()
    consumer.queue.append(FakeMessage(TOPIC, 0, 0, err=KafkaError(KafkaError._FENCED, "fenced", fatal=True)))
    with pytest.raises(KafkaException):
        group._poll(10, 0)


def test_lag_counts_the_buffered_records() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(5), (TOPIC, 1): values(2)})
    group = reader(consumer)
    group.fetch(3, 0.01)
    assert group.lag({(TOPIC, 0): 3}) == {(TOPIC, 0): 5, (TOPIC, 1): 2}


def test_consumed_records_make_lambdas_event_byte_for_byte() -> None:
    message = FakeMessage(TOPIC, 1, 15, b'{"key":"value"}', key_=b"pay-1",
                          timestamp_=(TIMESTAMP_LOG_APPEND_TIME, 1545084650987),
                          headers_=[("eventId", b"ev"), ("empty", None)])
    record = record_from_message(message)  # type: ignore[arg-type]
    source = KafkaSource(
        function="F", event_name="E", service="S", kind="SelfManagedKafka", topics=(TOPIC,), group_id="g",
        bootstrap_servers=("b1:9092",), batch_size=100, batching_window_seconds=0,
        starting_position="TRIM_HORIZON", function_timeout=1, report_item_failures=True,
        bisect_on_error=True, max_retry_attempts=None)
    assert lambda_kafka_event(source, [record])["records"] == {f"{TOPIC}-1": [{
        "topic": TOPIC, "partition": 1, "offset": 15, "timestamp": 1545084650987,
        "timestampType": "LOG_APPEND_TIME", "key": base64.b64encode(b"pay-1").decode(),
        "value": "eyJrZXkiOiJ2YWx1ZSJ9", "headers": [{"eventId": [101, 118]}, {"empty": []}],
    }]}
    no_headers = record_from_message(FakeMessage(TOPIC, 0, 1, None, key_=None))  # type: ignore[arg-type]
    assert (no_headers.timestamp_type, no_headers.headers, no_headers.value) == (0, (), None)


def test_the_poller_batches_commits_and_counts_what_it_read() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(3), (TOPIC, 1): values(2)})
    source = KafkaSource(
        function="F", event_name="E", service="CONSUMER-WORKER", kind="SelfManagedKafka", topics=(TOPIC,),
        group_id="g", bootstrap_servers=("b:9092",), batch_size=100, batching_window_seconds=0,
        starting_position="TRIM_HORIZON", function_timeout=1, report_item_failures=False,
        bisect_on_error=True, max_retry_attempts=None)
    delivered: list[list[int]] = []

    class Invoker:
        def invoke(self, function: str, event: dict[str, Any], timeout: float) -> Any:
            from infra.invoke import InvokeResult

            delivered.append([r["offset"] for rs in event["records"].values() for r in rs])
            return InvokeResult(200, None, b"{}")

    metrics = PollerMetrics()
    poller = KafkaPoller(source, "1", Invoker(), None, metrics, PollerConfig(),  # type: ignore[arg-type]
                         consumer_factory=lambda config: consumer)  # type: ignore[arg-type,return-value]
    config = poller.consumer_config()
    assert config["group.instance.id"] == "g.1" and config["enable.auto.commit"] is False
    assert config["auto.offset.reset"] == "error" and config["enable.partition.eof"] is True
    group = poller._new_reader()
    for _ in range(20):
        batch = poller._gather(group)
        if batch:
            poller.deliver(batch)
            poller._commit(group, batch)
        if consumer.commits == {(TOPIC, 0): 3, (TOPIC, 1): 2}:
            break
    assert sorted(offset for batch in delivered for offset in batch) == [0, 0, 1, 1, 2]
    consumed = metrics.registry.get_sample_value("kafka_consumer_fetch_manager_records_consumed_total",
                                                 {"application": "consumer-worker",
                                                  "client_id": poller.client_id, "topic": TOPIC})
    assert consumed == 5
    assert metrics.registry.get_sample_value("payfn_eventsource_committed_records_total",
                                             {"group": "g", "topic": TOPIC}) == 5
    poller._update_lag(group)
    assert metrics.registry.get_sample_value("payfn_consumer_lag",
                                             {"group": "g", "topic": TOPIC, "partition": "0"}) == 0


def test_a_refused_offset_that_exists_is_fetched_again_without_losing_or_repeating_records() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(2), (TOPIC, 1): values(2)})
    group = reader(consumer)
    first = read_until_paused(group)
    consumer.logs[(TOPIC, 0)].append(b"appending")
    consumer.logs[(TOPIC, 1)].append(b"other")
    consumer.refuse_fetch = {(TOPIC, 0)}  # noida-db: fetch at the offset being appended
    later = read_until_paused(group)
    assert sorted((r.partition, r.offset) for r in first + later) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                                      (1, 2)]
    assert "assign 0@2,1@3" in consumer.calls  # restarted at the positions, partition 1 past "other"


def test_a_refused_offset_whose_event_a_pause_dropped_is_restarted_on_resume() -> None:
    consumer = FakeConsumer({(TOPIC, 0): values(1)})
    group = reader(consumer)
    read_until_paused(group)
    consumer.stopped.add((TOPIC, 0))  # stopped by an offset error whose event the pause purged
    consumer.logs[(TOPIC, 0)].append(b"next")
    records: list[KafkaRecord] = []
    for _ in range(50):
        records = group.fetch(100, 0.01)
        if records:
            break
    assert [(r.offset, r.value) for r in records] == [(1, b"next")]
    assert "assign 0@1" in consumer.calls


def test_an_offset_outside_the_log_starts_as_the_starting_position_says() -> None:
    for position, expected in (("TRIM_HORIZON", [0, 1, 2]), ("LATEST", [])):
        consumer = FakeConsumer({(TOPIC, 0): values(3)}, commits={(TOPIC, 0): 7})  # log recreated
        consumer.refuse_fetch = {(TOPIC, 0)}
        group = reader(consumer, position=position)
        assert [r.offset for r in read_until_paused(group)] == expected


class StaleProbeConsumer(FakeConsumer):
    """A broker whose latest-offsets answer never moves (what two groups of one topic
    seemed to get in a CI run: both stayed paused while the topic's events piled up)."""

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.calls.append("latest")
        return [TopicPartition(tp.topic, tp.partition, 0) for tp in partitions]


def test_a_probe_that_answers_wrong_delays_records_but_never_stalls_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "MAX_PAUSED_SECONDS", 0.05)
    consumer = StaleProbeConsumer({(TOPIC, 0): [], (TOPIC, 1): []})
    group = reader(consumer)
    read_until_paused(group)
    consumer.logs[(TOPIC, 0)].extend([b"a", b"b"])
    records: list[KafkaRecord] = []
    deadline = time.monotonic() + 5
    while not records and time.monotonic() < deadline:
        records = group.fetch(100, 0.01)
    assert [(r.partition, r.offset) for r in records] == [(0, 0), (0, 1)]

