"""A function host's /metrics: HTTP server timers, series from execution environments, collectors.

Runs real hosts on the test-only template ``tests/fixtures/observability/template.yaml``
against the live Redis and MariaDB of the session stack.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from payfn_shared.platform.breaker import KEY_PREFIX, RedisCircuitBreaker
from prometheus_client.parser import text_string_to_metric_families

from infra.sam.template import REPO_ROOT
from tests.integration.runtime_support import HostProcess, running_host
from tests.invoke_auth import invoke_headers

TEMPLATE = REPO_ROOT / "tests" / "fixtures" / "observability" / "template.yaml"
BREAKER = "observability-fixture"


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` in a Prometheus text page, with its labels."""
    return [(sample.labels, sample.value) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


def value(text: str, metric: str, /, **labels: str) -> float | None:
    """The value of the one sample of ``metric`` whose labels include ``labels`` (None if absent)."""
    found = [v for sample_labels, v in samples(text, metric) if labels.items() <= sample_labels.items()]
    assert len(found) <= 1, (metric, labels, found)
    return found[0] if found else None


def invoke(host: HostProcess, function: str, event: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"{host.url}/2015-03-31/functions/{function}/invocations",
                                     data=json.dumps(event).encode(), method="POST", headers=invoke_headers())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def rest_event(resource: str, method: str, query: dict[str, str] | None = None) -> dict[str, Any]:
    return {"resource": resource, "path": resource, "httpMethod": method, "headers": {},
            "queryStringParameters": query, "requestContext": {"stage": "v1"}, "body": None,
            "isBase64Encoded": False}


def http_api_event(route_key: str, method: str, query: dict[str, str] | None = None) -> dict[str, Any]:
    return {"version": "2.0", "routeKey": route_key, "rawPath": "/v2/things", "headers": {},
            "queryStringParameters": query, "requestContext": {"http": {"method": method}},
            "isBase64Encoded": False}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    with running_host(tmp_path_factory.mktemp("metrics-host"), "--service", "METRICS-TEST",
                      "--template", str(TEMPLATE), "--no-register") as process:
        yield process


@pytest.fixture
def fixture_breaker(redis_client: redis.Redis) -> Iterator[RedisCircuitBreaker]:
    breaker = RedisCircuitBreaker(BREAKER, redis_client=redis_client)
    yield breaker
    redis_client.delete(f"{KEY_PREFIX}{{{BREAKER}}}")


def http_count(text: str, **labels: str) -> float | None:
    return value(text, "http_server_requests_seconds_count", application="metrics-test", **labels)


def test_api_invocations_are_http_server_requests(host: HostProcess) -> None:
    invoke(host, "StatusFunction", rest_event("/things/{thingId}", "POST", {"status": "201"}))
    invoke(host, "StatusFunction", rest_event("/things/{thingId}", "POST", {"status": "201"}))
    invoke(host, "StatusFunction", http_api_event("ANY /v2/things", "PUT", {"status": "404"}))
    invoke(host, "StatusFunction", rest_event("/things/{thingId}", "POST", {"raise": "1"}))
    invoke(host, "StatusFunction", rest_event("/things/{thingId}", "POST", {"bare": "1"}))
    invoke(host, "StatusFunction", rest_event("/made/up/{route}", "BREW", {"status": "200"}))
    text = host.get_text("/metrics")

    assert http_count(text, uri="/things/{thingId}", method="POST", status="201", outcome="SUCCESS") == 2
    # HTTP API: the route from routeKey, the method the client used (the route says ANY).
    assert http_count(text, uri="/v2/things", method="PUT", status="404", outcome="CLIENT_ERROR") == 1
    # A function error and a result that is no proxy response: what API Gateway answers, 502.
    assert http_count(text, uri="/things/{thingId}", method="POST", status="502", outcome="SERVER_ERROR") == 2
    # Routes and methods the template does not declare cannot create series of their own.
    assert http_count(text, uri="UNKNOWN", method="UNKNOWN", status="200") == 1
    buckets = [labels for labels, _ in samples(text, "http_server_requests_seconds_bucket")
               if labels["status"] == "201"]
    assert {labels["le"] for labels in buckets} >= {"0.1", "+Inf"}


def test_non_api_events_are_not_http_requests(host: HostProcess) -> None:
    before = host.get_text("/metrics")
    invoke(host, "StatusFunction", {"source": "aws.events", "detail-type": "Scheduled Event"})
    after = host.get_text("/metrics")
    count = "http_server_requests_seconds_count"
    assert samples(after, count) == samples(before, count)
    invocations = {"function": "StatusFunction", "service": "METRICS-TEST"}
    assert value(after, "payfn_lambda_invocations_total", **invocations) == \
        value(before, "payfn_lambda_invocations_total", **invocations) + 1


def test_series_written_in_execution_environments_reach_the_host(host: HostProcess) -> None:
    for _ in range(3):
        assert invoke(host, "FailOpenFunction", {}) == {"allowed": True}
    assert value(host.get_text("/metrics"), "payfn_ratelimit_fail_open_total", action="capture") == 3


def test_breaker_collector_reads_the_shared_state(host: HostProcess,
                                                  fixture_breaker: RedisCircuitBreaker) -> None:
    fixture_breaker.transition_to_forced_open()
    text = host.get_text("/metrics")
    states = {labels["state"]: v for labels, v in samples(text, "resilience4j_circuitbreaker_state")
              if labels["name"] == BREAKER}
    assert states == {"closed": 0, "open": 0, "half_open": 0, "disabled": 0, "forced_open": 1,
                      "forced_half_open": 0}
    # Declared by two functions of the host, collected once.
    assert text.count("# TYPE resilience4j_circuitbreaker_state ") == 1
    assert value(text, "payfn_collector_up", collector=f"circuitbreaker:{BREAKER}") == 1

    fixture_breaker.transition_to_closed()
    snapshot = fixture_breaker.snapshot()
    text = host.get_text("/metrics")
    assert value(text, "resilience4j_circuitbreaker_state", name=BREAKER, state="closed") == 1
    assert snapshot["failureRate"] == -1
    assert value(text, "resilience4j_circuitbreaker_failure_rate", name=BREAKER) == -1
    assert value(text, "resilience4j_circuitbreaker_slow_call_rate", name=BREAKER) == -1
    for kind in ("successful", "failed"):
        assert value(text, "resilience4j_circuitbreaker_buffered_calls", name=BREAKER, kind=kind) == 0
        assert value(text, "resilience4j_circuitbreaker_slow_calls", name=BREAKER, kind=kind) == 0
    assert value(text, "resilience4j_circuitbreaker_not_permitted_calls_total", name=BREAKER,
                 kind="not_permitted") == snapshot["numberOfNotPermittedCalls"]


def test_outbox_collector_reads_the_backlog(host: HostProcess) -> None:
    text = host.get_text("/metrics")
    assert value(text, "payfn_collector_up", collector="outbox") == 1
    backlog = value(text, "payfn_outbox_backlog")
    age = value(text, "payfn_outbox_oldest_age_seconds")
    assert backlog is not None and backlog >= 0
    assert age is not None and (age > 0 if backlog else age == 0)


def test_an_unreadable_source_is_reported_not_invented(tmp_path: Path) -> None:
    # FailOpenFunction's variables point Redis at a closed port.
    with running_host(tmp_path, "--functions", "FailOpenFunction", "--template", str(TEMPLATE)) as alone:
        text = alone.get_text("/metrics")
    assert value(text, "payfn_collector_up", collector=f"circuitbreaker:{BREAKER}") == 0
    assert samples(text, "resilience4j_circuitbreaker_state") == []
