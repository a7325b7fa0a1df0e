"""One Kafka event-source mapping run locally: poll, invoke, retry, dead-letter, commit.

Lambda's Kafka semantics, with only the Kafka protocol (any Kafka, Redpanda, MSK):

- A consumer group per mapping (``ConsumerGroupId``) with STATIC membership
  (``group_instance_id`` = group + poller instance): a restarted poller takes its
  partitions back at once, and a poller that died without closing does not leave
  its group blocked on brokers that wait for the dead member.
- Batches of up to ``BatchSize`` records, gathered for at most
  ``MaximumBatchingWindowInSeconds``, sent as Lambda's Kafka event to an UP
  instance of the function's service (Invoke API).
- Offsets are committed only once every record of the batch has either been
  processed or written to the DLQ; anything else (crash, timeout, poller killed)
  leaves them uncommitted, so the batch is delivered again. Consumers are
  idempotent by eventId, which turns at-least-once into exactly one effect.
- A function error is retried with exponential backoff (``MaximumRetryAttempts``
  if the event sets it, else ``PAYFN_EVENTSOURCE_MAX_RETRIES``); a batch that keeps
  failing is bisected (``BisectBatchOnFunctionError``, default on locally) down to
  the single record, which then goes to the DLQ (``payment.dlq``) with the seed's
  shape ``{originalTopic, partition, offset, payload, errorType, errorMessage,
  timestamp}`` and the partition moves on.
- With ``FunctionResponseTypes: [ReportBatchItemFailures]`` the function's partial
  batch response (``batchItemFailures[].itemIdentifier = {partition: "topic-p",
  offset}``) names the failed records: only those are retried and dead-lettered,
  with the ``errorType``/``errorMessage`` the function put next to each item.
- Not the record's fault, so never dead-lettered: no instance of the service is up
  or it throttles (nothing ran), or the function reports a dependency outage (errorType in
  ``PAYFN_EVENTSOURCE_DEPENDENCY_ERROR_TYPES``). Those wait and retry without
  limit, with capped backoff, holding the partition — as Lambda waits for a
  throttled or failing function.

kafka-python stays here because librdkafka fetches between polls and noida-db answers an empty Fetch at
once: caught up, polled every 200 ms, confluent-kafka took 46-52 % of a core and the broker 35-42 %
(kafka-python 1.7 % / 2.6 %; tests/load/bench_pieces.py, kafka); pausing idle partitions delayed events at
300/s by p50 0.9-1.5 s, p99 3-4 s, or with 3 ms polls delivered 0 of 3,000 in 20 s (the stall of 7e92a0d).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import MemberState, OffsetAndMetadata
from payfn_shared.payments.events import iso_millis
from payfn_shared.payments.topics import PAYMENT_DLQ
from payfn_shared.platform.backoff import Backoff
from payfn_shared.platform.config import ConfigError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infra.eventsource.sources import KafkaRecord, KafkaSource, group_instance_id, lambda_kafka_event
from infra.net.invoke import InvokeResult, InvokeUnavailable, ServiceInvoker

log = logging.getLogger("payfn.eventsource")


@dataclass(frozen=True)
class PollerConfig:
    """Knobs of the poller (env ``PAYFN_EVENTSOURCE_*``); times in milliseconds unless named.

    ``eventsource_idle_wait_max_ms`` caps the pause between two fetches that found
    nothing (see :meth:`KafkaPoller._gather`). The pause starts at the batching
    window and doubles, so it reaches the cap only after a few hundred ms of
    silence: under traffic the poller reads back to back, and only the first event
    after a quiet spell waits up to the cap. Each empty poll costs kafka-python
    about 3 ms of CPU (its IO thread's round trips), so the cap is what an idle
    mapping costs: 200 ms keeps the five mappings of the template under 10 % of a
    core while idle. (Doubling from 1 ms instead cost ~8 ms of poller CPU per event
    at 30 events/s: four or five empty fetches between two events.)

    ``eventsource_min_batching_window_ms`` is the shortest batching window the
    poller uses, whatever ``MaximumBatchingWindowInSeconds`` says (it is whole
    seconds in the template, so "as soon as possible" can only be written 0). Every
    kafka-python fetch and commit costs a few ms of CPU whatever it carries: with no
    window, 100 events/s arrived one per batch and the poller and the broker spent
    7 ms of CPU per event. 50 ms batches them, as Lambda's own pollers do, for at
    most 50 ms more latency.

    ``eventsource_check_crcs`` is off by default, as in librdkafka: kafka-python
    verifies record CRCs in pure Python unless the ``crc32c`` C extension is
    installed, which made fetching 5x slower than everything else the poller does
    (TCP already checksums the transfer; the CRC guards against broker-side corruption).
    """

    eventsource_max_retries: int = 2
    eventsource_backoff_initial_ms: int = 100
    eventsource_backoff_max_ms: int = 5000
    eventsource_dlq_topic: str = PAYMENT_DLQ
    eventsource_dependency_error_types: str = "DependencyUnavailable,ConnectionLost,TransientConflict"
    eventsource_session_timeout_ms: int = 10000
    eventsource_max_poll_interval_ms: int = 900000
    eventsource_invoke_margin_seconds: float = 5.0
    eventsource_check_crcs: bool = False
    eventsource_idle_wait_max_ms: int = 200
    eventsource_min_batching_window_ms: int = 50

    def validate(self) -> None:
        if self.eventsource_max_retries < 0:
            raise ConfigError("PAYFN_EVENTSOURCE_MAX_RETRIES must not be negative")
        if not 1 <= self.eventsource_backoff_initial_ms <= self.eventsource_backoff_max_ms:
            raise ConfigError("PAYFN_EVENTSOURCE_BACKOFF_INITIAL_MS must be >= 1 and <= "
                              "PAYFN_EVENTSOURCE_BACKOFF_MAX_MS")
        if self.eventsource_min_batching_window_ms < 0:
            raise ConfigError("PAYFN_EVENTSOURCE_MIN_BATCHING_WINDOW_MS must not be negative")
        if self.eventsource_idle_wait_max_ms < 1:
            raise ConfigError("PAYFN_EVENTSOURCE_IDLE_WAIT_MAX_MS must be >= 1")
        if not self.eventsource_dlq_topic:
            raise ConfigError("PAYFN_EVENTSOURCE_DLQ_TOPIC must not be empty")

    @property
    def dependency_error_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.eventsource_dependency_error_types.split(",") if t.strip())


class PollerMetrics:
    """Series of the poller process (``/metrics``), shared by every mapping it runs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The seed's Grafana panel queries exactly this name (Micrometer's Kafka binder).
        self.consumed = Counter("kafka_consumer_fetch_manager_records_consumed",
                                "Records fetched from Kafka by the consumer",
                                ["application", "client_id", "topic"], registry=self.registry)
        self.lag = Gauge("payfn_consumer_lag", "Records of the partition not yet processed (high watermark - "
                         "position)", ["group", "topic", "partition"], registry=self.registry)
        self.invocations = Counter("payfn_eventsource_invocations", "Batch invocations by outcome",
                                   ["function", "outcome"], registry=self.registry)
        self.duration = Histogram("payfn_eventsource_invoke_duration_seconds", "Invoke API round trip",
                                  ["function"], registry=self.registry)
        self.dead_lettered = Counter("payfn_eventsource_dlq_records", "Records written to the DLQ",
                                     ["function", "topic", "error_type"], registry=self.registry)
        self.committed = Counter("payfn_eventsource_committed_records", "Records committed after success",
                                 ["group", "topic"], registry=self.registry)


class Stopped(Exception):
    """The poller is stopping: abandon the batch without committing (it will be redelivered)."""


@dataclass
class Attempt:
    """What one invocation said about a set of records."""

    ok: bool
    error_type: str = ""
    error_message: str = ""
    failed: dict[tuple[str, int, int], tuple[str, str]] = field(default_factory=dict)


def record_id(record: KafkaRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


#: How long one fetch may take in :meth:`KafkaPoller._gather` before the poller sleeps.
ACTIVE_POLL_MS = 3
#: How long a poll may block while the membership is not steady (:func:`group_needs_poll`).
GROUP_POLL_MS = 200
#: Invoke API answers that mean "not run, try again" (throttled, function unknown there).
RETRY_STATUSES = frozenset({404, 429})
#: The seed's dead-letter record fields.
DLQ_FIELDS = ("originalTopic", "partition", "offset", "payload", "errorType", "errorMessage", "timestamp")


def dlq_payload(record: KafkaRecord, error_type: str, error_message: str) -> bytes:
    """The seed's DLQ record (the original value as text, so invalid JSON survives as is)."""
    return json.dumps({
        "originalTopic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "payload": None if record.value is None else record.value.decode("utf-8", "replace"),
        "errorType": error_type,
        "errorMessage": error_message,
        "timestamp": iso_millis(datetime.now(UTC)),
    }, separators=(",", ":")).encode()


def group_needs_poll(consumer: KafkaConsumer) -> bool:
    """True while the membership needs a blocking ``poll`` to progress.

    Heartbeats run on the client's own thread, but joining the group (first
    assignment, a rebalance the heartbeat reported) and reading the committed
    offsets of newly assigned partitions only progress inside ``poll``, and take
    more than one fetch's round trip: a poll cut short abandons them, so a member
    that only polled briefly would never rejoin (and keep partitions the group gave
    to another member) or never learn where to resume. kafka-python has no public
    call for this state: its coordinator and subscription state are read
    (kafka-python is pinned in requirements.lock).
    """
    coordinator = consumer._coordinator
    return bool(coordinator.state != MemberState.STABLE or coordinator.need_rejoin()
                or coordinator.coordinator_unknown() or not consumer.assignment()
                or not consumer._subscription.has_all_fetch_positions())


class _Rebalances(ConsumerRebalanceListener):
    """Keep the records gathered but not yet delivered consistent across a rebalance.

    The consumer's fetch position is already past them, so dropping them alone would
    lose them: on every (re)assignment they are dropped AND the partitions we keep
    are rewound to the first dropped offset, so they are fetched again (partitions
    that moved away are read by their new owner from the last commit).
    """

    def __init__(self, poller: KafkaPoller, consumer: KafkaConsumer) -> None:
        self.poller = poller
        self.consumer = consumer

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        for tp in revoked:
            self.poller.forget_lag(tp)

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        first_buffered: dict[TopicPartition, int] = {}
        for record in self.poller.buffer:
            tp = TopicPartition(record.topic, record.partition)
            first_buffered[tp] = min(record.offset, first_buffered.get(tp, record.offset))
        self.poller.buffer = []
        for tp in assigned:
            if tp in first_buffered:
                self.consumer.seek(tp, first_buffered[tp])
        log.info("%s: assigned %s", self.poller.source.name,
                 sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))


class KafkaPoller:
    """Runs one mapping in its own thread until :meth:`stop`."""

    def __init__(self, source: KafkaSource, instance: str, invoker: ServiceInvoker, producer: KafkaProducer,
                 metrics: PollerMetrics, config: PollerConfig,
                 consumer_factory: Callable[..., KafkaConsumer] = KafkaConsumer) -> None:
        self.source = source
        self.instance = instance
        self.invoker = invoker
        self.producer = producer
        self.metrics = metrics
        self.config = config
        self.consumer_factory = consumer_factory
        self.buffer: list[KafkaRecord] = []
        self.client_id = f"payfn-poller-{socket.gethostname()}-{instance}"
        self.application = source.service.lower()
        self.max_retries = (config.eventsource_max_retries if source.max_retry_attempts is None
                            else source.max_retry_attempts)
        self.batches = 0
        self.idle_wait_ms = 0
        self.batching_window = max(source.batching_window_seconds,
                                   config.eventsource_min_batching_window_ms / 1000)
        #: The first idle sleep (ms): one batching window, at least 1 ms.
        self.first_idle_wait_ms = max(round(self.batching_window * 1000), 1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"poller-{source.name}", daemon=True)
        self._consumer: KafkaConsumer | None = None
        self._lag_partitions: set[TopicPartition] = set()
        self._retry_backoff = Backoff(initial=config.eventsource_backoff_initial_ms / 1000,
                                      maximum=config.eventsource_backoff_max_ms / 1000)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _new_consumer(self) -> KafkaConsumer:
        consumer = self.consumer_factory(
            bootstrap_servers=list(self.source.bootstrap_servers),
            group_id=self.source.group_id,
            group_instance_id=group_instance_id(self.source, self.instance),
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self.source.starting_position == "TRIM_HORIZON" else "latest",
            max_poll_records=self.source.batch_size,
            session_timeout_ms=self.config.eventsource_session_timeout_ms,
            heartbeat_interval_ms=max(self.config.eventsource_session_timeout_ms // 3, 100),
            max_poll_interval_ms=self.config.eventsource_max_poll_interval_ms,
            fetch_max_wait_ms=100,
            check_crcs=self.config.eventsource_check_crcs,
        )
        consumer.subscribe(list(self.source.topics), listener=_Rebalances(self, consumer))
        return consumer

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consumer = self._new_consumer()
                self._consume(self._consumer)
            except Stopped:
                break
            except (KafkaError, OSError) as exc:
                log.warning("%s: Kafka error (%s); reconnecting", self.source.name, exc)
                self._sleep(1.0)
            except Exception:
                log.exception("%s: unexpected poller failure; restarting the consumer", self.source.name)
                self._sleep(1.0)
            finally:
                self._close_consumer()

    def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        self.buffer = []
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception:  # a broken connection may fail to close: it is dropped anyway
                log.debug("closing the consumer failed", exc_info=True)

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Stopped

    # -- the loop ----------------------------------------------------------------------

    def _consume(self, consumer: KafkaConsumer) -> None:
        while not self._stop.is_set():
            batch = self._gather(consumer)
            self._update_lag(consumer)
            if not batch:
                continue
            self.deliver(batch)
            self._commit(consumer, batch)
            self.batches += 1
            self._update_lag(consumer)
            if len(batch) < self.source.batch_size and self.batching_window > 0:
                # Caught up: the next batch gathers for one window before it is fetched
                # (a fetch right away would mostly come back empty, at a fetch's CPU).
                self.idle_wait_ms = self.first_idle_wait_ms
                self._sleep(self.batching_window)

    def _gather(self, consumer: KafkaConsumer) -> list[KafkaRecord]:
        """Up to BatchSize records, waiting at most the batching window once some have arrived.

        A blocking ``poll`` re-sends fetches in a loop until records come: Kafka
        parks an empty fetch for ``fetch.max.wait.ms``, but not every broker does
        (noida-db answers at once), and then an idle poller burns a core, and the
        broker as much again. So while the member is steady in its group, a fetch
        is given only ``ACTIVE_POLL_MS`` (one round trip) and, while nothing
        comes, the poller sleeps between fetches, doubling the sleep from the
        batching window up to ``eventsource_idle_wait_max_ms``; a record resets it, so a busy
        partition is read back to back. Once a batch has begun and a fetch comes
        back empty (the poller has caught up), it sleeps through the rest of the
        batching window and fetches once more, rather than fetching over and over;
        a backlog is read fetch after fetch with no sleep. While the membership is not steady
        (see :func:`group_needs_poll`) the poll blocks up to ``GROUP_POLL_MS``.
        """
        deadline = None
        while len(self.buffer) < self.source.batch_size and not self._stop.is_set():
            steady = not group_needs_poll(consumer)
            slept_before = self.idle_wait_ms > 0
            arrived = self._take(consumer.poll(timeout_ms=ACTIVE_POLL_MS if steady else GROUP_POLL_MS,
                                               max_records=self.source.batch_size - len(self.buffer)))
            if arrived:
                self.idle_wait_ms = 0
            elif steady and not self.buffer:
                cap = max(self.config.eventsource_idle_wait_max_ms, self.first_idle_wait_ms)
                self.idle_wait_ms = min(max(self.idle_wait_ms * 2, self.first_idle_wait_ms), cap)
                self._sleep(self.idle_wait_ms / 1000)
            if not self.buffer:
                return []
            if deadline is None:
                # Records fetched after an idle sleep had that sleep to gather: no window on top.
                deadline = time.monotonic() + (0 if slept_before else self.batching_window)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if steady and not arrived:
                # Caught up: let the rest of the window's records gather in the broker and
                # fetch them at once (every fetch costs a few ms of CPU whatever it brings).
                self._sleep(left)
        batch, self.buffer = self.buffer[: self.source.batch_size], self.buffer[self.source.batch_size:]
        return batch

    def _take(self, polled: dict[TopicPartition, list[KafkaRecord]]) -> int:
        """Buffer what a poll returned; how many records that was."""
        count = 0
        for tp, records in polled.items():
            self.metrics.consumed.labels(self.application, self.client_id, tp.topic).inc(len(records))
            self.buffer.extend(records)
            count += len(records)
        return count

    def _commit(self, consumer: KafkaConsumer, batch: Sequence[KafkaRecord]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for record in batch:
            tp = TopicPartition(record.topic, record.partition)
            current = offsets.get(tp)
            if current is None or record.offset + 1 > current.offset:
                offsets[tp] = OffsetAndMetadata(record.offset + 1, "", -1)
        try:
            consumer.commit(offsets)
        except CommitFailedError as exc:
            # The partitions moved to another member meanwhile: it reads them again from
            # the last commit, and the consumers' idempotency absorbs the repeat.
            log.warning("%s: commit refused after a rebalance (%s)", self.source.name, exc)
            return
        for tp in offsets:
            count = sum(1 for r in batch if r.topic == tp.topic and r.partition == tp.partition)
            self.metrics.committed.labels(self.source.group_id, tp.topic).inc(count)

    def _update_lag(self, consumer: KafkaConsumer) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = consumer.position(tp, timeout_ms=100)
            except KafkaError:
                continue
            if position is None:
                continue
            buffered = sum(1 for r in self.buffer if r.topic == tp.topic and r.partition == tp.partition)
            self.metrics.lag.labels(self.source.group_id, tp.topic, str(tp.partition)).set(
                max(highwater - position + buffered, 0))
            self._lag_partitions.add(tp)

    def forget_lag(self, tp: TopicPartition) -> None:
        if tp in self._lag_partitions:
            self._lag_partitions.discard(tp)
            self.metrics.lag.remove(self.source.group_id, tp.topic, str(tp.partition))

    # -- delivery ------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> None:
        self._sleep(self._retry_backoff.delay(attempt))

    def _invoke(self, records: Sequence[KafkaRecord]) -> Attempt:
        """One invocation; waits (without limit) while no instance can take it."""
        unavailable = 0
        event = lambda_kafka_event(self.source, records)
        timeout = self.source.function_timeout + self.config.eventsource_invoke_margin_seconds
        while True:
            started = time.monotonic()
            try:
                result = self.invoker.invoke(self.source.function, event, timeout=timeout)
            except InvokeUnavailable as exc:
                unavailable += 1
                self.metrics.invocations.labels(self.source.function, "unavailable").inc()
                if unavailable == 1 or unavailable % 20 == 0:
                    log.warning("%s: %s; waiting", self.source.name, exc)
                self._backoff(min(unavailable, 6))
                continue
            self.metrics.duration.labels(self.source.function).observe(time.monotonic() - started)
            if result.status in RETRY_STATUSES or result.status >= 500:
                # Throttled, or the function is not (yet) on that host: nothing ran, as
                # with an unavailable instance. Lambda retries these without limit too.
                unavailable += 1
                self.metrics.invocations.labels(self.source.function, "throttled").inc()
                self._backoff(min(unavailable, 6))
                continue
            return self._interpret(result, records)

    def _interpret(self, result: InvokeResult, records: Sequence[KafkaRecord]) -> Attempt:
        if result.status != 200 or result.function_error is not None:
            self.metrics.invocations.labels(self.source.function, "error").inc()
            return Attempt(False, result.error_type, result.error_message)
        failed: dict[tuple[str, int, int], tuple[str, str]] = {}
        if self.source.report_item_failures:
            body = result.json()
            items = body.get("batchItemFailures") if isinstance(body, dict) else None
            by_item = {(f"{r.topic}-{r.partition}", r.offset): record_id(r) for r in records}
            for item in items or []:
                identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
                key = (identifier.get("partition"), identifier.get("offset")) if isinstance(
                    identifier, dict) else None
                if key not in by_item:
                    # Lambda treats an unusable item identifier as a failure of the whole batch.
                    self.metrics.invocations.labels(self.source.function, "error").inc()
                    message = f"unusable itemIdentifier {identifier!r}"
                    return Attempt(False, "InvalidBatchItemFailure", message)
                failed[by_item[key]] = (str(item.get("errorType") or "RecordFailed"),
                                        str(item.get("errorMessage") or "reported in batchItemFailures"))
        self.metrics.invocations.labels(self.source.function, "partial" if failed else "ok").inc()
        return Attempt(True, failed=failed)

    def deliver(self, records: Sequence[KafkaRecord]) -> None:
        """Return once every record is processed or dead-lettered; raises Stopped when stopping."""
        pending = list(records)
        attempt = 0
        while pending:
            outcome = self._invoke(pending)
            if outcome.ok and not outcome.failed:
                return
            if outcome.ok:
                pending = [r for r in pending if record_id(r) in outcome.failed]
                attempt += 1
                if attempt > self.max_retries:
                    for record in pending:
                        self.dead_letter(record, *outcome.failed[record_id(record)])
                    return
                self._backoff(attempt)
                continue
            if outcome.error_type in self.config.dependency_error_types:
                log.warning("%s: dependency unavailable (%s); retrying", self.source.name,
                            outcome.error_message)
                self._backoff(6)
                continue
            attempt += 1
            if attempt <= self.max_retries:
                log.warning("%s: batch of %d failed (%s: %s); retry %d/%d", self.source.name, len(pending),
                            outcome.error_type, outcome.error_message, attempt, self.max_retries)
                self._backoff(attempt)
                continue
            if len(pending) > 1 and self.source.bisect_on_error:
                middle = len(pending) // 2
                self.deliver(pending[:middle])
                self.deliver(pending[middle:])
                return
            for record in pending:
                self.dead_letter(record, outcome.error_type, outcome.error_message)
            return

    def dead_letter(self, record: KafkaRecord, error_type: str, error_message: str) -> None:
        """Write the record to the DLQ and wait for the ack (retrying while Kafka is down)."""
        headers = [*record.headers, ("dlqErrorType", error_type.encode())]
        value = dlq_payload(record, error_type, error_message)
        attempt = 0
        while True:
            try:
                self.producer.send(self.config.eventsource_dlq_topic, key=record.key, value=value,
                                   headers=headers).get(timeout=10)
                break
            except KafkaError as exc:
                attempt += 1
                log.warning("%s: DLQ write failed (%s); retrying", self.source.name, exc)
                self._backoff(min(attempt, 6))
        log.warning("%s: %s-%s@%s dead-lettered (%s: %s)", self.source.name, record.topic, record.partition,
                    record.offset, error_type, error_message)
        self.metrics.dead_lettered.labels(self.source.function, record.topic, error_type).inc()
