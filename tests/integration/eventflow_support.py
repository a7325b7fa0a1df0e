"""Running the event flow for tests: a private template, registry, function host and poller.

Every test gets its own topics, consumer groups, DLQ topic, service name and
registry table, so tests never see each other's records, offsets or instances.
The pieces are the real ones: ``python -m infra.runtime.host`` runs the functions,
``python -m infra.eventsource`` polls the shared broker, the registry is the real
server over its own table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Producer
from payfn_shared.platform.config import Settings

from infra.sam.template import REPO_ROOT
from infra.stack.kafka_admin import (
    TopicRecord,
    committed_offsets,
    ensure_topics,
    partitions_of,
    read_back_consumer,
    read_records,
)
from tests.integration.registry_support import wait_until

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "eventflow"

TEMPLATE_HEAD = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  DbHost: {{Type: String}}
  DbPort: {{Type: String}}
  DbName: {{Type: String}}
  DbUser: {{Type: String}}
  DbPassword: {{Type: String}}
  RedisHost: {{Type: String}}
  RedisPort: {{Type: String}}
  KafkaBootstrapServers: {{Type: String}}
Globals:
  Function:
    Runtime: python3.11
    Timeout: 20
    MemorySize: 256
    Layers: [!Ref SharedLayer]
    Environment:
      Variables:
        PAYFN_DB_HOST: !Ref DbHost
        PAYFN_DB_PORT: !Ref DbPort
        PAYFN_DB_NAME: !Ref DbName
        PAYFN_DB_USER: !Ref DbUser
        PAYFN_DB_PASSWORD: !Ref DbPassword
        PAYFN_REDIS_HOST: !Ref RedisHost
        PAYFN_REDIS_PORT: !Ref RedisPort
        PAYFN_KAFKA_BOOTSTRAP: !Ref KafkaBootstrapServers
Resources:
  SharedLayer:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: {layer}
"""

KAFKA_FUNCTION = """\
  {name}:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: {code}
      Handler: {handler}
      Environment:
        Variables: {variables}
      Tags:
        payfn:service: {service}
      Events:
        Stream:
          Type: SelfManagedKafka
          Properties:
            KafkaBootstrapServers: !Split [",", !Ref KafkaBootstrapServers]
            Topics: [{topic}]
            ConsumerGroupId: {group}
            StartingPosition: TRIM_HORIZON
            BatchSize: {batch_size}
            MaximumBatchingWindowInSeconds: 0
            FunctionResponseTypes: [ReportBatchItemFailures]
            SourceAccessConfigurations:
              - Type: VPC_SUBNET
                URI: subnet:subnet-0
              - Type: VPC_SECURITY_GROUP
                URI: security_group:sg-0
"""


@dataclass
class Flow:
    """The names one test owns."""

    directory: Path
    service: str
    topic: str
    group: str
    dlq: str
    template: Path

    @property
    def env(self) -> dict[str, str]:
        return {"PAYFN_EVENTSOURCE_DLQ_TOPIC": self.dlq, "PAYFN_EVENTSOURCE_BACKOFF_INITIAL_MS": "50",
                "PAYFN_EVENTSOURCE_BACKOFF_MAX_MS": "500"}


def new_flow(directory: Path, settings: Settings, handler: str, code: Path = FIXTURES,
             variables: dict[str, str] | None = None, batch_size: int = 100) -> Flow:
    """A template with one Kafka-triggered function on a fresh topic; the topics are created."""
    suffix = uuid.uuid4().hex[:10]
    flow = Flow(directory, f"EVENTFLOW-{suffix.upper()}", f"test.events.{suffix}", f"test-group-{suffix}",
                f"test.dlq.{suffix}", directory / "template.yaml")
    text = TEMPLATE_HEAD.format(layer=REPO_ROOT / "layers" / "shared") + KAFKA_FUNCTION.format(
        name="ConsumerFunction", code=code, handler=handler, variables=json.dumps(variables or {"X": "1"}),
        service=flow.service, topic=flow.topic, group=flow.group, batch_size=batch_size)
    flow.template.write_text(text, encoding="utf-8")
    ensure_topics(settings.kafka_bootstrap, 2, (flow.topic, flow.dlq))
    return flow


@dataclass
class Process:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def running(name: str, argv: list[str], directory: Path, env: dict[str, str] | None = None,
            ready_marker: str = "LISTENING") -> Iterator[Process]:
    """A platform process (``python -m …``) with its output in a file; SIGTERM on exit."""
    log_path = directory / f"{name}.log"
    with log_path.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO_ROOT, stdout=out, stderr=out,
                                   env={**os.environ, **(env or {})})
    handle = Process(process, log_path)
    try:
        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{handle.log()}")
            return ready_marker in handle.log()

        wait_until(ready, timeout=30, interval=0.05)
        yield handle
    finally:
        handle.stop()


@contextmanager
def running_host(flow: Flow, registry_url: str, env: dict[str, str] | None = None) -> Iterator[Process]:
    with running("host", ["infra.runtime.host", "--service", flow.service, "--template", str(flow.template),
                          "--registry-url", registry_url, "--port", "0"], flow.directory, env) as host:
        yield host


def poller_argv(flow: Flow, registry_url: str, instance: str = "1") -> list[str]:
    return ["infra.eventsource", "--instance", instance, "--template", str(flow.template),
            "--registry-url", registry_url, "--no-register"]


def payment_event(event_type: str, merchant: str, amount: int, event_id: str | None = None) -> dict[str, Any]:
    """A payment event payload as ingest writes it."""
    return {"eventId": event_id or str(uuid.uuid4()), "eventType": event_type, "paymentId": str(uuid.uuid4()),
            "merchantId": merchant, "status": "REQUESTED", "amount": amount, "currency": "USD",
            "occurredAt": "2026-01-01T00:00:00.000Z"}


def produce(settings: Settings, topic: str, values: list[bytes], key: bytes = b"k") -> None:
    """Write ``values`` to one partition of ``topic`` (same key), in order, acked."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all",
                         "enable.idempotence": True})
    for value in values:
        producer.produce(topic, key=key, value=value, headers=[("eventType", b"TEST")])
    left = producer.flush(10)
    assert left == 0, f"{left} of {len(values)} records not acknowledged"


def read_all(settings: Settings, topic: str, expected: int, timeout: float = 20) -> list[TopicRecord]:
    """Every record of ``topic`` once ``expected`` have arrived (no group, from the beginning)."""
    consumer = read_back_consumer(settings.kafka_bootstrap)
    try:
        starts = dict.fromkeys(partitions_of(consumer, [topic]), OFFSET_BEGINNING)
        records: list[TopicRecord] = []
        batches = read_records(consumer, starts, timeout + 1)

        def enough() -> bool:
            records.extend(next(batches, []))
            return len(records) >= expected

        wait_until(enough, timeout=timeout, interval=0)
        return records
    finally:
        consumer.close()


def committed(settings: Settings, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offsets per partition (None: nothing committed), read without
    joining the group."""
    return {partition: offset for (_, partition), offset
            in committed_offsets(settings.kafka_bootstrap, group, [topic]).items()}


SCHEDULED_FUNCTION = """\
  RecorderFunction:
    Type: AWS::Serverless::Function
    Metadata:
      payfn:local-schedule:
        Tick:
          IntervalSecondsVariable: TEST_TICK_SECONDS
          DefaultIntervalSeconds: 60
    Properties:
      CodeUri: {code}
      Handler: recorder.handler
      Environment:
        Variables:
          RECORDER_FILE: {output}
          RECORDER_SLEEP: "{sleep}"
      Tags:
        payfn:service: {service}
      Events:
        Tick:
          Type: Schedule
          Properties:
            Schedule: rate(1 hour)
"""


def scheduled_flow(directory: Path, sleep: float) -> tuple[Flow, Path]:
    """A template with one scheduled recorder function; returns it and the recorder's output file."""
    suffix = uuid.uuid4().hex[:10]
    output = directory / "ticks.jsonl"
    flow = Flow(directory, f"SCHEDULED-{suffix.upper()}", "", "", "", directory / "template.yaml")
    text = TEMPLATE_HEAD.format(layer=REPO_ROOT / "layers" / "shared") + SCHEDULED_FUNCTION.format(
        code=FIXTURES, output=output, sleep=sleep, service=flow.service)
    flow.template.write_text(text, encoding="utf-8")
    return flow, output


def listening_address(process: Process) -> str:
    """``host:port`` from the ``LISTENING host:port`` line a platform process prints."""
    for line in process.log().splitlines():
        if line.startswith("LISTENING "):
            return line.split(" ", 1)[1].strip()
    raise AssertionError("process printed no LISTENING line")
