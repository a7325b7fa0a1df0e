"""Scrape-time collectors a function host runs because the template asks for them.

A function declares them in its template ``Metadata`` (``payfn:collectors:
[circuitbreaker:NAME, outbox]``) and every host that runs it exports them, once per
host: the Redis-shared breaker's state under Resilience4j's Micrometer names, and the
outbox backlog and oldest age.

Why at scrape time: the values live in shared storage, not in any one process, so they
cost nothing on the request path and stay true when the functions are idle. They are
configured from the declaring function's environment, so they read the same Redis,
database and breaker settings. A source that cannot be read adds none of its series
and sets ``payfn_collector_up{collector}`` to 0.

Series and reasons in full: docs/RUNTIME.md#infraruntimecollectors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from payfn_shared.payments.relay import BACKLOG_METRIC, OLDEST_AGE_METRIC, read_backlog
from payfn_shared.platform import breaker
from payfn_shared.platform.config import load_dataclass, load_settings
from payfn_shared.platform.db import Database, DbConfig
from payfn_shared.platform.redis_client import RedisClientConfig, create_redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from infra.runtime.functions import COLLECTORS_METADATA, FunctionConfigError, FunctionDefinition

log = logging.getLogger("payfn.runtime.collectors")

#: Micrometer's state tag values, in Resilience4j's enum order (FORCED_HALF_OPEN exists
#: there for admin use; payfn's breaker never enters it, so it always reads 0).
MICROMETER_STATES = ("closed", "open", "half_open", "disabled", "forced_open", "forced_half_open")
#: Scrape-time reads must fail fast: Prometheus gives a scrape 5 s at most here.
SCRAPE_TIMEOUT_SECONDS = 1.0


class Source(Protocol):
    """One thing a collector reads; ``collect`` raises when it cannot be read."""

    name: str

    def collect(self) -> list[Metric]: ...


class BreakerSource:
    """A Redis-shared circuit breaker, read with its snapshot script (one round trip)."""

    def __init__(self, breaker_name: str, variables: Mapping[str, str]) -> None:
        self.name = f"circuitbreaker:{breaker_name}"
        self.breaker_name = breaker_name
        settings = load_settings(variables)
        config = load_dataclass(breaker.BreakerConfig, variables)
        client = create_redis(settings.redis_url, RedisClientConfig(
            connect_timeout_seconds=SCRAPE_TIMEOUT_SECONDS, socket_timeout_seconds=SCRAPE_TIMEOUT_SECONDS,
            retries=1, max_connections=2))
        self.store = breaker.RedisBreakerStore(client, breaker_name, config)

    def collect(self) -> list[Metric]:
        raw = self.store.snapshot(int(time.time() * 1000))
        snapshot = breaker.build_snapshot(raw, self.store.storage)
        name = self.breaker_name
        state = GaugeMetricFamily("resilience4j_circuitbreaker_state",
                                  "The states of the circuit breaker: 1 for the current state, 0 for the "
                                  "others", labels=["name", "state"])
        current = raw.state.lower()
        for value in MICROMETER_STATES:
            state.add_metric([name, value], 1.0 if value == current else 0.0)
        failure_rate = GaugeMetricFamily("resilience4j_circuitbreaker_failure_rate",
                                         "The failure rate of the circuit breaker (percent, -1 below the "
                                         "minimum number of calls)", labels=["name"])
        failure_rate.add_metric([name], snapshot["failureRate"])
        slow_rate = GaugeMetricFamily("resilience4j_circuitbreaker_slow_call_rate",
                                      "The slow call rate of the circuit breaker (percent, -1 below the "
                                      "minimum number of calls)", labels=["name"])
        slow_rate.add_metric([name], snapshot["slowCallRate"])
        buffered = GaugeMetricFamily("resilience4j_circuitbreaker_buffered_calls",
                                     "The number of buffered calls stored in the ring buffer",
                                     labels=["kind", "name"])
        buffered.add_metric(["successful", name], snapshot["numberOfSuccessfulCalls"])
        buffered.add_metric(["failed", name], snapshot["numberOfFailedCalls"])
        slow = GaugeMetricFamily("resilience4j_circuitbreaker_slow_calls",
                                 "The number of slow calls which were slower than a certain threshold",
                                 labels=["kind", "name"])
        slow.add_metric(["successful", name], snapshot["numberOfSlowSuccessfulCalls"])
        slow.add_metric(["failed", name], snapshot["numberOfSlowFailedCalls"])
        not_permitted = CounterMetricFamily("resilience4j_circuitbreaker_not_permitted_calls",
                                            "Total number of not permitted calls (reset with the breaker's "
                                            "metrics on each state transition)", labels=["kind", "name"])
        not_permitted.add_metric(["not_permitted", name], snapshot["numberOfNotPermittedCalls"])
        return [state, failure_rate, slow_rate, buffered, slow, not_permitted]


class OutboxSource:
    """The transactional outbox's backlog, by the relay's own indexed query."""

    name = "outbox"

    def __init__(self, variables: Mapping[str, str]) -> None:
        self.database = Database(load_settings(variables), DbConfig(
            db_read_timeout=SCRAPE_TIMEOUT_SECONDS, db_write_timeout=SCRAPE_TIMEOUT_SECONDS,
            db_retry_attempts=1))

    def collect(self) -> list[Metric]:
        connection = self.database.connection()
        try:
            with connection.cursor() as cursor:
                backlog = read_backlog(cursor)
        except Exception:
            self.database.discard()
            raise
        size = GaugeMetricFamily(BACKLOG_METRIC, "Outbox rows not yet published to Kafka")
        size.add_metric([], backlog.size)
        age = GaugeMetricFamily(OLDEST_AGE_METRIC, "Age of the oldest unpublished outbox row (0 if none)")
        age.add_metric([], backlog.oldest_age_seconds)
        return [size, age]


def _breaker_source(argument: str, variables: Mapping[str, str]) -> Source:
    if not argument:
        raise FunctionConfigError("circuitbreaker collector needs a breaker name (circuitbreaker:NAME)")
    return BreakerSource(argument, variables)


def _outbox_source(argument: str, variables: Mapping[str, str]) -> Source:
    if argument:
        raise FunctionConfigError(f"outbox collector takes no argument (got {argument!r})")
    return OutboxSource(variables)


FACTORIES: dict[str, Callable[[str, Mapping[str, str]], Source]] = {
    "circuitbreaker": _breaker_source,
    "outbox": _outbox_source,
}


class HostCollectors:
    """The host's scrape-time sources as one prometheus_client collector."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = list(sources)
        self._failing: set[str] = set()

    def describe(self) -> list[Metric]:
        """Nothing to pre-declare: registering must not read Redis or the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("payfn_collector_up", "Whether the last scrape could read the source",
                               labels=["collector"])
        for source in self.sources:
            try:
                metrics = source.collect()
            except Exception as exc:
                if source.name not in self._failing:
                    log.warning("collector %s failed: %s", source.name, exc)
                    self._failing.add(source.name)
                up.add_metric([source.name], 0.0)
                continue
            if source.name in self._failing:
                log.info("collector %s reads again", source.name)
                self._failing.discard(source.name)
            up.add_metric([source.name], 1.0)
            yield from metrics
        yield up


def build_collectors(definitions: Sequence[FunctionDefinition]) -> HostCollectors | None:
    """The collectors the hosted functions declare (``payfn:collectors``), or None if none does."""
    sources: dict[str, Source] = {}
    for definition in definitions:
        for entry in definition.collectors:
            if entry in sources:
                continue
            kind, _, argument = entry.partition(":")
            factory = FACTORIES.get(kind)
            if factory is None:
                raise FunctionConfigError(f"{definition.logical_id}: unknown {COLLECTORS_METADATA} entry "
                                          f"{entry!r} (known: {', '.join(sorted(FACTORIES))})")
            sources[entry] = factory(argument, definition.variables)
    return HostCollectors(list(sources.values())) if sources else None
