"""The poller's Kafka side: a librdkafka consumer that reads a group's partitions and idles without fetching.

Why it pauses when idle: a real Kafka broker holds an empty Fetch for
``fetch.wait.max.ms`` (long polling), so a caught-up consumer costs next to nothing.
The local broker (noida-db) answers an empty Fetch at once, and librdkafka then
fetches again at once: hundreds to thousands of Fetch requests a second per
consumer, which keeps the broker and the poller busy while nothing happens. So once
every assigned partition has reported its end (``enable.partition.eof``) the reader
pauses them (librdkafka sends no Fetch for a paused partition) and, after an idle
backoff that grows from ``eventsource_idle_backoff_initial_ms`` to
``eventsource_idle_backoff_max_ms`` while nothing comes, asks for the partitions'
latest offsets (one ListOffsets request for all of them). Only when one is past
the reader's position does it resume them. Under load a fetch returns records, the
end is not reached, and the reader never pauses.

Three librdkafka details this relies on:

- ``resume()`` alone does not wake librdkafka's broker thread, which sleeps up to a
  second when it has nothing to fetch; a ``seek()`` to the reader's own position right
  after it changes the partition's fetch state and wakes the thread, so the first
  record after an idle spell costs milliseconds, not a second.
- A partition paused before anything was read from it resumes at a *logical*
  offset, and librdkafka then looks the committed offset up again on every resume
  (a pause before the answer discards it, so it may never fetch). ``on_assign``
  therefore resolves each partition's start itself and assigns absolute offsets.
- Pausing drops what librdkafka prefetched for the partition; it fetches again from
  the last record handed out, so a record that arrives just before a pause is read
  after the resume, never lost.

Rebalances: records handed out but not yet delivered (the poller's batch buffer)
are past the consumer's position, so dropping them alone would lose them. On
revoke the poller gives them back (:meth:`ReaderListener.release`) and the reader
remembers the first offset of each partition; when a partition is assigned again
it starts there. A partition that went to another member is read by it from the
last commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_END,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from infra.eventsource.sources import KafkaRecord

log = logging.getLogger("payfn.eventsource")

TopicKey = tuple[str, int]

#: Broker round trips on assignment and offset errors (committed offsets, watermarks), in seconds.
OFFSETS_TIMEOUT = 10.0
#: The idle probe's round trip (latest offsets), in seconds: short, because while the
#: broker is down an unanswered probe only means "fetch and let librdkafka report".
PROBE_TIMEOUT = 1.0

#: The longest a caught-up reader stays paused on the latest-offsets probe alone: then it
#: fetches anyway. The probe is the broker's word; a fetch is what really reads, so a
#: probe that answers wrong (seen once in CI: two groups of one topic stayed paused while
#: its events piled up) costs at most this much delay, never a stall.
MAX_PAUSED_SECONDS = 1.0

#: Commit errors that mean "the partitions moved to another member meanwhile".
COMMIT_REFUSED = frozenset({
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.FENCED_INSTANCE_ID, KafkaError._ASSIGNMENT_LOST,
})


def record_from_message(message: Message) -> KafkaRecord:
    """librdkafka's message as the event-source record (its timestamp kind as Kafka's attribute)."""
    kind, timestamp = message.timestamp()
    return KafkaRecord(message.topic(), message.partition(), message.offset(), timestamp,
                       1 if kind == TIMESTAMP_LOG_APPEND_TIME else 0, message.key(), message.value(),
                       tuple(message.headers() or ()))


class ReaderListener(Protocol):
    """What the reader needs from its owner around a rebalance."""

    def release(self, partitions: Collection[TopicKey]) -> dict[TopicKey, int]:
        """Drop the undelivered records of ``partitions``; the first dropped offset of each."""

    def revoked(self, partitions: Collection[TopicKey]) -> None:
        """These partitions are no longer this member's."""


class GroupReader:
    """One consumer-group member: records as they come, pausing while there are none."""

    def __init__(self, consumer: Consumer, topics: Sequence[str], starting_position: str,
                 listener: ReaderListener, idle_backoff: tuple[float, float], name: str) -> None:
        self.consumer = consumer
        self.from_earliest = starting_position == "TRIM_HORIZON"
        self.listener = listener
        self.idle_initial, self.idle_max = idle_backoff
        self.name = name
        self.assigned: list[TopicKey] = []
        #: Next offset to hand out per assigned partition (the consumer's position).
        self.positions: dict[TopicKey, int] = {}
        self.paused = False
        self.paused_at = 0.0
        self.idle_delay = self.idle_initial
        self._at_end: set[TopicKey] = set()
        self._rewind: dict[TopicKey, int] = {}
        consumer.subscribe(list(topics), on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_revoke)

    # -- reading -------------------------------------------------------------------------

    def fetch(self, max_records: int, timeout: float) -> list[KafkaRecord]:
        """Up to ``max_records`` as soon as some are there, or none after about ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(deadline - time.monotonic(), 0.0)
            if self.paused:
                # Nothing is fetched now; polling still serves rebalances and keeps the
                # member alive (max.poll.interval.ms). Records come only after a rebalance
                # replaced the paused assignment.
                records = self._poll(max_records, min(self.idle_delay, remaining))
                if records:
                    return records
                if self.paused:
                    if self._has_new_records() or time.monotonic() - self.paused_at >= MAX_PAUSED_SECONDS:
                        self._resume()
                    else:
                        self.idle_delay = min(self.idle_delay * 2, self.idle_max)
            else:
                records = self._poll(max_records, remaining)
                if records:
                    self.idle_delay = self.idle_initial
                    return records
                if self.assigned and self._at_end.issuperset(self.assigned):
                    self._pause()
            if time.monotonic() >= deadline:
                return []

    def _poll(self, max_records: int, timeout: float) -> list[KafkaRecord]:
        """What librdkafka has, waiting at most ``timeout`` for the first record or event."""
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        messages = [first]
        if max_records > 1:
            messages.extend(self.consumer.consume(max_records - 1, 0))
        records: list[KafkaRecord] = []
        refused: list[TopicKey] = []
        for message in messages:
            error = message.error()
            key = (message.topic(), message.partition())
            if error is None:
                record = record_from_message(message)
                records.append(record)
                self.positions[key] = record.offset + 1
                self._at_end.discard(key)
            elif error.code() == KafkaError._PARTITION_EOF:
                # Positions move only with records handed out: an end offset that ran
                # ahead of them would skip records for good.
                self._at_end.add(key)
            elif error.code() == KafkaError._AUTO_OFFSET_RESET:
                refused.append(key)
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("%s: Kafka consumer: %s", self.name, error.str())
        # Only once every record taken from librdkafka is counted in the positions:
        # the restart fetches from them.
        if refused:
            self._out_of_range(refused)
        return records

    def _out_of_range(self, keys: Collection[TopicKey]) -> None:
        """The broker refused the fetch offset: read on from it if it exists, else start as configured.

        The consumer runs with ``auto.offset.reset=error`` so this decision is the
        reader's: noida-db answers a Fetch at an offset whose batch it is still
        appending with OFFSET_OUT_OF_RANGE, and librdkafka's own reset would then
        jump to the earliest offset (redelivering the partition) or the latest
        (skipping the batch). An offset between the watermarks exists: fetch it
        again. One outside them is gone (retention) or never was: start at the
        earliest or latest offset, as StartingPosition says, as Kafka's reset would.
        """
        for key in keys:
            position = self.positions.get(key)
            low, high = self.consumer.get_watermark_offsets(TopicPartition(*key), timeout=OFFSETS_TIMEOUT)
            if position is None or not low <= position <= high:
                start = low if self.from_earliest else high
                log.warning("%s: %s-%s offset %s is out of range [%s, %s]; reading on from %s", self.name,
                            key[0], key[1], position, low, high, start)
                self.positions[key] = start
        self._restart()

    def _restart(self) -> None:
        """Fetch every assigned partition again from the reader's positions.

        After an offset error librdkafka stops fetching the partition, and a seek is
        refused in that state (``_STATE``); assigning the same partitions at absolute
        offsets starts them again. Nothing handed out is lost: the positions are
        past exactly what the reader returned.
        """
        self.consumer.assign([TopicPartition(topic, partition, self.positions[(topic, partition)])
                              for topic, partition in self.assigned])
        self.paused = False
        self._at_end.clear()

    def _partitions(self) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for topic, partition in self.assigned]

    def _pause(self) -> None:
        self.consumer.pause(self._partitions())
        self.paused = True
        self.paused_at = time.monotonic()

    def _resume(self) -> None:
        """Fetch again from the reader's positions, and wake librdkafka's broker thread to do it now.

        ``resume()`` is queued; ``seek()`` waits until librdkafka has handled its
        request, which comes after the resume in the same queue, so once the seeks
        return the partitions are fetchable. The broker thread, asleep for up to a
        second, is then woken by a request to it: the latest offsets once more.
        Positions are known for every assigned partition (set on assignment).
        """
        self.consumer.resume(self._partitions())
        try:
            for topic, partition in self.assigned:
                self.consumer.seek(TopicPartition(topic, partition, self.positions[(topic, partition)]))
        except KafkaException as exc:
            if not exc.args or exc.args[0].code() != KafkaError._STATE:
                raise
            # A partition stopped by an offset error (its event was dropped with the
            # pause): start it again.
            self._restart()
        self.paused = False
        self._at_end.clear()
        self._latest_offsets()

    def _latest_offsets(self) -> list[TopicPartition] | None:
        """Each assigned partition's latest offset (one ListOffsets per broker); None if unknown."""
        try:
            return self.consumer.offsets_for_times(
                [TopicPartition(topic, partition, OFFSET_END) for topic, partition in self.assigned],
                timeout=PROBE_TIMEOUT)
        except KafkaException as exc:
            log.debug("%s: latest offsets unavailable (%s)", self.name, exc)
            return None

    def _has_new_records(self) -> bool:
        """Whether any assigned partition's latest offset is past the position."""
        latest = self._latest_offsets()
        if latest is None:
            # Unknown, so fetch: librdkafka reports and backs off a broker that is down.
            return True
        return any(tp.error is not None or tp.offset > self.positions.get((tp.topic, tp.partition), -1)
                   for tp in latest)

    # -- rebalances ----------------------------------------------------------------------

    def _take_back(self, partitions: Collection[TopicKey]) -> None:
        for key, offset in self.listener.release(partitions).items():
            self._rewind[key] = min(offset, self._rewind.get(key, offset))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._take_back(keys)
        self.listener.revoked(keys)
        if self.paused:
            # A pause would outlive the assignment in librdkafka: clear it while the
            # partitions are still ours, so a later assignment fetches.
            consumer.resume(partitions)
        gone = set(keys)
        self.assigned = [key for key in self.assigned if key not in gone]
        for key in gone:
            self.positions.pop(key, None)
            self._at_end.discard(key)
        self.paused = self.paused and bool(self.assigned)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._take_back(keys)
        rewind, self._rewind = self._rewind, {}
        starts = self._start_offsets(partitions, rewind)
        for tp in partitions:
            tp.offset = starts[(tp.topic, tp.partition)]
        consumer.assign(partitions)
        self.assigned = keys
        self.positions = dict(starts)
        self._at_end.clear()
        self.paused = False
        self.idle_delay = self.idle_initial
        log.info("%s: assigned %s", self.name, sorted(f"{topic}-{partition}" for topic, partition in keys))

    def _start_offsets(self, partitions: list[TopicPartition],
                       rewind: Mapping[TopicKey, int]) -> dict[TopicKey, int]:
        """Absolute start per partition: first undelivered record, else the commit, else StartingPosition."""
        wanted = {(tp.topic, tp.partition) for tp in partitions}
        starts = {key: offset for key, offset in rewind.items() if key in wanted}
        lookup = [TopicPartition(tp.topic, tp.partition) for tp in partitions
                  if (tp.topic, tp.partition) not in starts]
        if not lookup:
            return starts
        for tp in self.consumer.committed(lookup, timeout=OFFSETS_TIMEOUT):
            if tp.error is not None:
                raise KafkaException(tp.error)
            if tp.offset >= 0:
                starts[(tp.topic, tp.partition)] = tp.offset
                continue
            low, high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                            timeout=OFFSETS_TIMEOUT)
            starts[(tp.topic, tp.partition)] = low if self.from_earliest else high
        return starts

    # -- offsets ---------------------------------------------------------------------------

    def commit(self, offsets: Mapping[TopicKey, int]) -> list[TopicKey]:
        """Commit synchronously; the partitions committed (none if a rebalance refused it)."""
        partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset
                      in offsets.items()]
        try:
            result = self.consumer.commit(offsets=partitions, asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() in COMMIT_REFUSED:
                # The partitions moved to another member meanwhile: it reads them again from
                # the last commit, and the consumers' idempotency absorbs the repeat.
                log.warning("%s: commit refused after a rebalance (%s)", self.name, error.str())
                return []
            raise
        committed = [(tp.topic, tp.partition) for tp in result or [] if tp.error is None]
        refused = [f"{tp.topic}-{tp.partition}: {tp.error}" for tp in result or [] if tp.error is not None]
        if refused:
            log.warning("%s: commit refused for %s", self.name, ", ".join(refused))
        return committed

    def lag(self, buffered: Mapping[TopicKey, int]) -> dict[TopicKey, int]:
        """Records not yet processed per assigned partition: high watermark - position + ``buffered``.

        The high watermark is librdkafka's, from the last fetch (no broker call): while
        the partitions are paused it is the one the reader last caught up with.
        """
        lags: dict[TopicKey, int] = {}
        for key in self.assigned:
            watermarks: Any = self.consumer.get_watermark_offsets(TopicPartition(*key), cached=True)
            position = self.positions.get(key)
            if not watermarks or watermarks[1] < 0 or position is None:
                continue
            lags[key] = max(watermarks[1] - position + buffered.get(key, 0), 0)
        return lags

    def close(self) -> None:
        """Leave without committing (a static member keeps its partitions until its session ends)."""
        self.consumer.close()
