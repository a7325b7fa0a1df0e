"""The poller's delivery rules with a fake Invoke API and a fake DLQ producer (no Kafka, no host)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from infra.eventsource.poller import KafkaPoller, PollerConfig, PollerMetrics
from infra.eventsource.sources import KafkaSource
from infra.invoke import InvokeResult

CONFIG = PollerConfig(eventsource_max_retries=1, eventsource_backoff_initial_ms=1,
                      eventsource_backoff_max_ms=1)


@dataclass
class Record:
    offset: int
    value: bytes
    topic: str = "payment.captured"
    partition: int = 0
    key: bytes | None = b"k"
    timestamp: int = 0
    timestamp_type: int = 0
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class FakeFunction:
    """Fails any batch holding a value in ``crash_on``; reports values in ``report`` as item failures."""

    def __init__(self, crash_on: set[bytes] = frozenset(), report: set[bytes] = frozenset(),
                 status: list[int] | None = None, error_type: str = "Runtime.ExitError") -> None:
        self.crash_on, self.report, self.error_type = crash_on, report, error_type
        self.statuses = list(status or [])
        self.batches: list[list[int]] = []

    def invoke(self, function: str, event: dict[str, Any], timeout: float) -> InvokeResult:
        records = [r for rs in event["records"].values() for r in rs]
        self.batches.append([r["offset"] for r in records])
        if self.statuses:
            return InvokeResult(self.statuses.pop(0), None, b"{}")
        values = {json.loads(base64.b64decode(r["value"])) for r in records}
        if values & {v.decode() for v in self.crash_on}:
            body = {"errorType": self.error_type, "errorMessage": "boom"}
            return InvokeResult(200, "Unhandled", json.dumps(body).encode())
        failures = [{"itemIdentifier": {"partition": f"{r['topic']}-{r['partition']}", "offset": r["offset"]},
                     "errorType": "InvalidJson", "errorMessage": "bad"}
                    for r in records if json.loads(base64.b64decode(r["value"])) in
                    {v.decode() for v in self.report}]
        return InvokeResult(200, None, json.dumps({"batchItemFailures": failures}).encode())


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
        self.sent.append({"topic": topic, **json.loads(value)})
        return self

    def get(self, timeout: float) -> None:
        return None


def poller(function: FakeFunction, producer: FakeProducer) -> KafkaPoller:
    source = KafkaSource(
        function="F", event_name="E", service="S", kind="SelfManagedKafka", topics=("payment.captured",),
        group_id="g", bootstrap_servers=("b:9092",), batch_size=100, batching_window_seconds=0,
        starting_position="TRIM_HORIZON", function_timeout=1, report_item_failures=True,
        bisect_on_error=True, max_retry_attempts=None)
    return KafkaPoller(source, "1", function, producer, PollerMetrics(), CONFIG)  # type: ignore[arg-type]


def records(*values: str) -> list[Record]:
    return [Record(offset, json.dumps(value).encode()) for offset, value in enumerate(values)]


def test_a_crashing_record_is_isolated_by_bisection_and_dead_lettered_alone() -> None:
    function, producer = FakeFunction(crash_on={b"bad"}), FakeProducer()
    poller(function, producer).deliver(records("a", "b", "bad", "c"))
    assert [(m["offset"], m["errorType"], m["payload"]) for m in producer.sent] == [
        (2, "Runtime.ExitError", '"bad"')]
    assert function.batches[:2] == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert [0, 1] in function.batches and [3] in function.batches


def test_reported_item_failures_are_retried_alone_then_dead_lettered() -> None:
    function, producer = FakeFunction(report={b"poison"}), FakeProducer()
    poller(function, producer).deliver(records("a", "poison", "b"))
    assert function.batches == [[0, 1, 2], [1]]  # the batch, then one retry of the failed record
    assert [(m["offset"], m["errorType"], m["originalTopic"]) for m in producer.sent] == [
        (1, "InvalidJson", "payment.captured")]


def test_throttles_and_dependency_outages_are_retried_without_dead_lettering() -> None:
    function, producer = FakeFunction(status=[429, 503, 429]), FakeProducer()
    poller(function, producer).deliver(records("a"))
    assert len(function.batches) == 4 and producer.sent == []
    outage = FakeFunction(crash_on={b"a"}, error_type="DependencyUnavailable")
    calls = {"n": 0}
    original = outage.invoke

    def heal_after_three(function_name: str, event: dict[str, Any], timeout: float) -> InvokeResult:
        calls["n"] += 1
        if calls["n"] > 3:
            outage.crash_on = set()
        return original(function_name, event, timeout)

    outage.invoke = heal_after_three  # type: ignore[method-assign]
    poller(outage, producer).deliver(records("a", "b"))
    assert producer.sent == [] and calls["n"] == 4
