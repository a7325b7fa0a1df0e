"""One Kafka event-source mapping run locally: poll, invoke, retry, dead-letter, commit.

Lambda's Kafka semantics, with only the Kafka protocol (any Kafka, Redpanda, MSK),
read through librdkafka (confluent-kafka; the consumer side is
``infra.eventsource.reader``, which also pauses caught-up partitions because the
local broker does not long-poll):

- A consumer group per mapping (``ConsumerGroupId``) with STATIC membership
  (``group.instance.id`` = group + poller instance): a restarted poller takes its
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
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from payfn_shared.config import ConfigError
from payfn_shared.events import iso_millis
from payfn_shared.topics import PAYMENT_DLQ
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infra.eventsource.reader import GroupReader, TopicKey
from infra.eventsource.sources import KafkaRecord, KafkaSource, group_instance_id, lambda_kafka_event
from infra.invoke import InvokeResult, InvokeUnavailable, ServiceInvoker

log = logging.getLogger("payfn.eventsource")

#: librdkafka's own log lines (served by the consumer's poll), under the poller's logger.
KAFKA_LOG = logging.getLogger("payfn.eventsource.kafka")


@dataclass(frozen=True)
class PollerConfig:
    """Knobs of the poller (env ``PAYFN_EVENTSOURCE_*``); times in milliseconds unless named.

    ``eventsource_idle_backoff_*_ms``: how long a caught-up consumer waits, with its
    partitions paused, before it looks for new records; doubling from the initial to
    the max while nothing comes, back to the initial once records flow. The local
    broker does not long-poll (an empty Fetch returns at once), so without this a
    consumer with nothing to read re-fetches without pause and burns CPU in the
    poller and the broker; see ``infra.eventsource.reader``. The max bounds the
    latency the first record after an idle spell pays; under load there is no backoff.

    ``eventsource_check_crcs`` (librdkafka's ``check.crcs``) is off, librdkafka's
    default: TCP already checksums the transfer, the CRC guards against broker-side
    corruption at a CPU cost per record.
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
    eventsource_idle_backoff_initial_ms: int = 5
    eventsource_idle_backoff_max_ms: int = 50

    def validate(self) -> None:
        if self.eventsource_max_retries < 0:
            raise ConfigError("PAYFN_EVENTSOURCE_MAX_RETRIES must not be negative")
        if not 1 <= self.eventsource_backoff_initial_ms <= self.eventsource_backoff_max_ms:
            raise ConfigError("PAYFN_EVENTSOURCE_BACKOFF_INITIAL_MS must be >= 1 and <= "
                              "PAYFN_EVENTSOURCE_BACKOFF_MAX_MS")
        if not 1 <= self.eventsource_idle_backoff_initial_ms <= self.eventsource_idle_backoff_max_ms:
            raise ConfigError("PAYFN_EVENTSOURCE_IDLE_BACKOFF_INITIAL_MS must be >= 1 and <= "
                              "PAYFN_EVENTSOURCE_IDLE_BACKOFF_MAX_MS")
        if not self.eventsource_dlq_topic:
            raise ConfigError("PAYFN_EVENTSOURCE_DLQ_TOPIC must not be empty")

    @property
    def dependency_error_types(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.eventsource_dependency_error_types.split(",") if t.strip())

    @property
    def idle_backoff(self) -> tuple[float, float]:
        """(initial, max) idle backoff in seconds."""
        return (self.eventsource_idle_backoff_initial_ms / 1000.0,
                self.eventsource_idle_backoff_max_ms / 1000.0)


#: librdkafka's reconnect backoff cap (its default is 10 s): after a restart of the local
#: broker (drills, ``payfn up``) the poller reads again within about a second, not ten;
#: the backoff still grows to this cap while the broker stays down.
RECONNECT_BACKOFF_MAX_MS = 1000


def dlq_producer(bootstrap_servers: str, instance: str) -> Producer:
    """The DLQ's producer: idempotent, acks from all replicas, a final delivery report within 10 s.

    ``message.timeout.ms`` bounds how long a dead-letter write waits for its report,
    so a write is retried only after librdkafka has given up on it (no duplicate
    from a retry racing the original).
    """
    return Producer({"bootstrap.servers": bootstrap_servers, "client.id": f"payfn-poller-dlq-{instance}",
                     "acks": "all", "enable.idempotence": True, "linger.ms": 0, "message.timeout.ms": 10000,
                     "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS})


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


class KafkaPoller:
    """Runs one mapping in its own thread until :meth:`stop`."""

    def __init__(self, source: KafkaSource, instance: str, invoker: ServiceInvoker, producer: Producer,
                 metrics: PollerMetrics, config: PollerConfig,
                 consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer) -> None:
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"poller-{source.name}", daemon=True)
        self._reader: GroupReader | None = None
        self._lag_partitions: set[TopicKey] = set()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def consumer_config(self) -> dict[str, Any]:
        """librdkafka settings of this mapping's consumer.

        - Static membership (``group.instance.id``): a restarted poller takes its
          partitions back at once, and a killed one does not block its group.
        - Offsets are committed by the poller only (``enable.auto.commit`` off).
        - The reader decides where to start (StartingPosition) and what an
          out-of-range offset means (``auto.offset.reset=error``, see
          ``GroupReader._out_of_range``). After such an error librdkafka waits
          ``fetch.error.backoff.ms`` before fetching the partition again: its default
          500 ms would be the latency of every record behind it, 20 ms is enough for
          the broker to finish the append that caused it.
        - Partition EOF events tell the reader it has caught up (then it pauses, see
          ``infra.eventsource.reader``).
        - Reconnects back off to at most :data:`RECONNECT_BACKOFF_MAX_MS`.
        - The prefetch is capped far below librdkafka's 64 MB default: one process
          runs a consumer per mapping, and a batch never needs more than a few
          BatchSizes ahead.
        """
        session = self.config.eventsource_session_timeout_ms
        return {
            "bootstrap.servers": ",".join(self.source.bootstrap_servers),
            "group.id": self.source.group_id,
            "group.instance.id": group_instance_id(self.source, self.instance),
            "client.id": self.client_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
            "enable.partition.eof": True,
            "session.timeout.ms": session,
            "heartbeat.interval.ms": max(session // 3, 100),
            "max.poll.interval.ms": self.config.eventsource_max_poll_interval_ms,
            "fetch.wait.max.ms": 100,
            "fetch.error.backoff.ms": 20,
            "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
            "check.crcs": self.config.eventsource_check_crcs,
            "queued.min.messages": max(4 * self.source.batch_size, 1000),
            "queued.max.messages.kbytes": 16384,
            "logger": KAFKA_LOG,
        }

    def _new_reader(self) -> GroupReader:
        return GroupReader(self.consumer_factory(self.consumer_config()), self.source.topics,
                           self.source.starting_position, self, self.config.idle_backoff, self.source.name)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._reader = self._new_reader()
                self._consume(self._reader)
            except Stopped:
                break
            except (KafkaException, OSError) as exc:
                log.warning("%s: Kafka error (%s); reconnecting", self.source.name, exc)
                self._sleep(1.0)
            except Exception:
                log.exception("%s: unexpected poller failure; restarting the consumer", self.source.name)
                self._sleep(1.0)
            finally:
                self._close_reader()

    def _close_reader(self) -> None:
        reader, self._reader = self._reader, None
        self.buffer = []
        if reader is not None:
            try:
                reader.close()
            except Exception:  # a broken connection may fail to close: it is dropped anyway
                log.debug("closing the consumer failed", exc_info=True)

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Stopped

    # -- the reader's rebalance listener ---------------------------------------------------

    def release(self, partitions: Collection[TopicKey]) -> dict[TopicKey, int]:
        """Drop the buffered records of ``partitions``; the first dropped offset of each."""
        wanted = set(partitions)
        first: dict[TopicKey, int] = {}
        kept: list[KafkaRecord] = []
        for record in self.buffer:
            key = (record.topic, record.partition)
            if key in wanted:
                first[key] = min(record.offset, first.get(key, record.offset))
            else:
                kept.append(record)
        self.buffer = kept
        return first

    def revoked(self, partitions: Collection[TopicKey]) -> None:
        for key in partitions:
            self.forget_lag(key)

    # -- the loop ----------------------------------------------------------------------

    def _consume(self, reader: GroupReader) -> None:
        while not self._stop.is_set():
            batch = self._gather(reader)
            self._update_lag(reader)
            if not batch:
                continue
            self.deliver(batch)
            self._commit(reader, batch)
            self.batches += 1
            self._update_lag(reader)

    def _gather(self, reader: GroupReader) -> list[KafkaRecord]:
        """Up to BatchSize records, waiting at most the batching window once some have arrived."""
        deadline = None
        while len(self.buffer) < self.source.batch_size and not self._stop.is_set():
            wait = 0.2 if deadline is None else max(deadline - time.monotonic(), 0.0)
            records = reader.fetch(self.source.batch_size - len(self.buffer), wait)
            by_topic: dict[str, int] = {}
            for record in records:
                by_topic[record.topic] = by_topic.get(record.topic, 0) + 1
            for topic, count in by_topic.items():
                self.metrics.consumed.labels(self.application, self.client_id, topic).inc(count)
            self.buffer.extend(records)
            if not self.buffer:
                return []
            if deadline is None:
                deadline = time.monotonic() + self.source.batching_window_seconds
            if time.monotonic() >= deadline:
                break
        batch, self.buffer = self.buffer[: self.source.batch_size], self.buffer[self.source.batch_size:]
        return batch

    def _commit(self, reader: GroupReader, batch: Sequence[KafkaRecord]) -> None:
        offsets: dict[TopicKey, int] = {}
        for record in batch:
            key = (record.topic, record.partition)
            offsets[key] = max(record.offset + 1, offsets.get(key, 0))
        for topic, partition in reader.commit(offsets):
            count = sum(1 for r in batch if r.topic == topic and r.partition == partition)
            self.metrics.committed.labels(self.source.group_id, topic).inc(count)

    def _update_lag(self, reader: GroupReader) -> None:
        buffered: dict[TopicKey, int] = {}
        for record in self.buffer:
            key = (record.topic, record.partition)
            buffered[key] = buffered.get(key, 0) + 1
        for (topic, partition), lag in reader.lag(buffered).items():
            self.metrics.lag.labels(self.source.group_id, topic, str(partition)).set(lag)
            self._lag_partitions.add((topic, partition))

    def forget_lag(self, key: TopicKey) -> None:
        if key in self._lag_partitions:
            self._lag_partitions.discard(key)
            self.metrics.lag.remove(self.source.group_id, key[0], str(key[1]))

    # -- delivery ------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> None:
        base = self.config.eventsource_backoff_initial_ms * (2 ** max(attempt - 1, 0))
        delay = min(base, self.config.eventsource_backoff_max_ms) / 1000.0
        self._sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not security

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
            error = self._produce(self.config.eventsource_dlq_topic, record.key, value, headers)
            if error is None:
                break
            attempt += 1
            log.warning("%s: DLQ write failed (%s); retrying", self.source.name, error)
            self._backoff(min(attempt, 6))
        log.warning("%s: %s-%s@%s dead-lettered (%s: %s)", self.source.name, record.topic, record.partition,
                    record.offset, error_type, error_message)
        self.metrics.dead_lettered.labels(self.source.function, record.topic, error_type).inc()

    def _produce(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, bytes | None]]) -> str | None:
        """Send one record and wait for its delivery report: None once acked, else the error.

        The report always comes (``message.timeout.ms``, see :func:`dlq_producer`).
        Pollers share the producer, so another thread's poll may serve this report.
        """
        reports: list[KafkaError | None] = []

        def delivered(error: KafkaError | None, message: Message) -> None:
            reports.append(error)

        try:
            self.producer.produce(topic, key=key, value=value, headers=headers, on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            return str(exc)
        while not reports:
            self.producer.poll(0.1)
        return None if reports[0] is None else reports[0].str()
