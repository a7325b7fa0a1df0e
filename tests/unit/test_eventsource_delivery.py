"""The poller's delivery rules with a fake Invoke API and a fake DLQ producer (no Kafka, no host)."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.structs import MemberState

from infra.eventsource.poller import (
    ACTIVE_POLL_MS,
    GROUP_POLL_MS,
    KafkaPoller,
    PollerConfig,
    PollerMetrics,
    Stopped,
)
from infra.eventsource.sources import KafkaSource
from infra.net.invoke import InvokeResult

CONFIG = PollerConfig(eventsource_max_retries=1, eventsource_backoff_initial_ms=1,
                      eventsource_backoff_max_ms=1, eventsource_min_batching_window_ms=0)


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


def poller(function: FakeFunction, producer: FakeProducer, config: PollerConfig = CONFIG) -> KafkaPoller:
    source = KafkaSource(
        function="F", event_name="E", service="S", kind="SelfManagedKafka", topics=("payment.captured",),
        group_id="g", bootstrap_servers=("b:9092",), batch_size=100, batching_window_seconds=0,
        starting_position="TRIM_HORIZON", function_timeout=1, report_item_failures=True,
        bisect_on_error=True, max_retry_attempts=None)
    return KafkaPoller(source, "1", function, producer, PollerMetrics(), config)  # type: ignore[arg-type]


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


class ScriptedCoordinator:
    def __init__(self) -> None:
        self.state = MemberState.STABLE
        self.rejoin = False

    def need_rejoin(self) -> bool:
        return self.rejoin

    def coordinator_unknown(self) -> bool:
        return False


class ScriptedSubscription:
    def __init__(self) -> None:
        self.positions_known = True

    def has_all_fetch_positions(self) -> bool:
        return self.positions_known


class ScriptedConsumer:
    """Answers each poll with the next scripted records (none once exhausted); logs every poll's timeout."""

    PARTITION = TopicPartition("payment.captured", 0)

    def __init__(self, *answers: list[Record]) -> None:
        self.answers = list(answers)
        self.assigned = True
        self._coordinator = ScriptedCoordinator()
        self._subscription = ScriptedSubscription()
        self.polls: list[int] = []

    def assignment(self) -> set[TopicPartition]:
        return {self.PARTITION} if self.assigned else set()

    def poll(self, timeout_ms: int, max_records: int | None = None) -> dict[TopicPartition, list[Record]]:
        self.polls.append(timeout_ms)
        answer = self.answers.pop(0) if self.answers else []
        return {self.PARTITION: answer} if answer else {}


def sleeping_poller(config: PollerConfig = CONFIG) -> tuple[KafkaPoller, list[int]]:
    subject = poller(FakeFunction(), FakeProducer(), config)
    sleeps: list[int] = []
    subject._sleep = lambda seconds: sleeps.append(round(seconds * 1000))  # type: ignore[method-assign]
    return subject, sleeps


def test_an_idle_poller_sleeps_between_short_fetches_and_a_record_ends_the_sleeps() -> None:
    """A broker that answers an empty fetch at once must not make the poller spin."""
    subject, sleeps = sleeping_poller()
    consumer = ScriptedConsumer(*[[]] * 10, *[[r] for r in records("a")])
    gathered = [subject._gather(consumer) for _ in range(11)]  # type: ignore[arg-type]
    assert consumer.polls == [ACTIVE_POLL_MS] * 11, "a fetch must not block (the client re-fetches in a loop)"
    assert sleeps == [1, 2, 4, 8, 16, 32, 64, 128, 200, 200]
    assert gathered[:10] == [[]] * 10 and [r.offset for r in gathered[10]] == [0]
    subject._gather(consumer)  # type: ignore[arg-type]
    assert sleeps[-1] == 1, "after a record the next idle wait starts short again"


@pytest.mark.parametrize("unsteady", ["unassigned", "rebalancing", "rejoin requested", "positions unknown"])
def test_while_the_membership_is_not_steady_the_poll_blocks_and_nothing_sleeps(unsteady: str) -> None:
    """A join or an offset lookup only progresses inside poll; a poll cut short abandons it."""
    subject, sleeps = sleeping_poller()
    consumer = ScriptedConsumer([], *[[r] for r in records("a")])
    if unsteady == "unassigned":
        consumer.assigned = False
    elif unsteady == "rebalancing":
        consumer._coordinator.state = MemberState.REBALANCING
    elif unsteady == "rejoin requested":
        consumer._coordinator.rejoin = True
    else:
        consumer._subscription.positions_known = False
    assert subject._gather(consumer) == []  # type: ignore[arg-type]
    assert [r.offset for r in subject._gather(consumer)] == [0]  # type: ignore[arg-type]
    assert consumer.polls == [GROUP_POLL_MS, GROUP_POLL_MS] and sleeps == []


def test_once_caught_up_the_poller_sleeps_through_the_batching_window_then_fetches_once() -> None:
    """Fetching over and over inside the window would cost a fetch's CPU each time for nothing."""
    subject = poller(FakeFunction(), FakeProducer(), replace(CONFIG, eventsource_min_batching_window_ms=50))
    sleeps: list[float] = []
    subject._sleep = lambda seconds: (sleeps.append(seconds), time.sleep(seconds))  # type: ignore[method-assign]
    a, b, c, d = records("a", "b", "c", "d")
    consumer = ScriptedConsumer([a], [b], [], [c, d])
    batch = subject._gather(consumer)  # type: ignore[arg-type]
    assert [r.offset for r in batch] == [0, 1, 2, 3]
    assert consumer.polls == [ACTIVE_POLL_MS] * 4, "records keep coming: fetch again at once; empty: sleep"
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.05, sleeps


def test_with_a_batching_window_idle_sleeps_start_at_it_and_what_they_gathered_goes_at_once() -> None:
    """Short sleeps between two events of a moderate flow would cost a fetch each for nothing."""
    subject, sleeps = sleeping_poller(replace(CONFIG, eventsource_min_batching_window_ms=50))
    consumer = ScriptedConsumer([], [], [], [], *[[r] for r in records("a")])
    gathered = [subject._gather(consumer) for _ in range(5)]  # type: ignore[arg-type]
    assert sleeps == [50, 100, 200, 200], "no window sleep: the idle sleeps already gathered"
    assert gathered[:4] == [[]] * 4 and [r.offset for r in gathered[4]] == [0]
    assert consumer.polls == [ACTIVE_POLL_MS] * 5


def test_after_a_batch_that_was_not_full_the_next_one_gathers_for_a_window_before_its_fetch() -> None:
    """A fetch right after a delivery would mostly come back empty, at a fetch's CPU."""
    subject, sleeps = sleeping_poller(replace(CONFIG, eventsource_min_batching_window_ms=50))
    a, b = records("a", "b")
    consumer = ScriptedConsumer([a], [], [], [b])
    consumer.commit = lambda offsets: None  # type: ignore[attr-defined]
    consumer.highwater = lambda tp: None  # type: ignore[attr-defined]

    def stop_after_two_batches(seconds: float) -> None:
        sleeps.append(round(seconds * 1000))
        if subject.batches == 2 or len(sleeps) > 10:
            raise Stopped
        time.sleep(seconds)

    subject._sleep = stop_after_two_batches  # type: ignore[method-assign]
    with pytest.raises(Stopped):
        subject._consume(consumer)  # type: ignore[arg-type]
    assert subject.invoker.batches == [[0], [1]]  # type: ignore[attr-defined]
    # In the first batch the window is slept through (less the time spent); after it one
    # window, whose fetch brings b at once; after the second batch the loop stops.
    assert len(sleeps) == 3 and 0 < sleeps[0] <= 50 and sleeps[1:] == [50, 50], sleeps
