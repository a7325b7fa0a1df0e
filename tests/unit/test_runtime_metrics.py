"""The function host's metric pieces that need no process: routes, statuses, label bounds, collectors."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from infra.net.http_metrics import outcome_of
from infra.runtime.collectors import HostCollectors, build_collectors
from infra.runtime.functions import FunctionConfigError, FunctionDefinition
from infra.runtime.host import api_route, client_status
from infra.runtime.invoker import Invocation
from infra.runtime.metrics import MULTIPROCESS_DIR_PREFIX, RuntimeMetrics, new_multiprocess_dir
from infra.runtime.worker import proxy_status

DEFINITION = FunctionDefinition(
    logical_id="Fn", function_name="Fn", handler="app.handler", runtime="python3.11", code_dir=Path("."),
    layer_dirs=(), timeout=3.0, memory_size=128, reserved_concurrency=None, service="SVC", variables={})


def test_api_route_of_rest_and_http_api_events() -> None:
    assert api_route({"resource": "/payments/capture/{paymentId}", "httpMethod": "POST",
                      "path": "/payments/capture/p-1"}) == ("POST", "/payments/capture/{paymentId}")
    v2 = {"routeKey": "ANY /v2/things", "requestContext": {"http": {"method": "PUT"}}}
    assert api_route(v2) == ("PUT", "/v2/things")
    assert api_route({"routeKey": "$default", "requestContext": {"http": {"method": "GET"}}}) == (
        "GET", "$default")
    assert api_route({"source": "aws.events"}) is None
    assert api_route({"Records": []}) is None
    assert api_route([1, 2]) is None


@pytest.mark.parametrize(("invocation", "status"), [
    (Invocation("r", b"", None, status_code=201), 201),
    (Invocation("r", b"", None), 502),
    (Invocation("r", b"", "Unhandled"), 502),
    (Invocation("r", b"", "Unhandled", timed_out=True), 504),
])
def test_client_status_is_what_api_gateway_answers(invocation: Invocation, status: int) -> None:
    assert client_status(invocation) == status


def test_proxy_status_reads_status_codes_only() -> None:
    assert proxy_status({"statusCode": 404, "body": ""}) == 404
    assert proxy_status({"statusCode": "201"}) == 201
    assert proxy_status({"statusCode": True}) is None
    assert proxy_status({"body": "x"}) is None
    assert proxy_status("a string result") is None


def test_outcome_of_follows_micrometer() -> None:
    assert [outcome_of(s) for s in (101, 200, 302, 429, 503)] == [
        "INFORMATIONAL", "SUCCESS", "REDIRECTION", "CLIENT_ERROR", "SERVER_ERROR"]


def test_http_series_labels_are_bounded_by_the_template() -> None:
    metrics = RuntimeMetrics()
    http = metrics.http_for("ingest-service", ["/payments/authorize"])
    http.observe("POST", "/payments/authorize", 200, 0.01)
    for index in range(50):
        http.observe("POST", f"/attack/{index}", 200, 0.01)
        http.observe(f"VERB{index}", "/payments/authorize", 1000 + index, 0.01)
    text = generate_latest(metrics.registry).decode()
    counts = [line for line in text.splitlines() if line.startswith("http_server_requests_seconds_count")]
    assert sorted(counts) == sorted([
        'http_server_requests_seconds_count{application="ingest-service",method="POST",outcome="SUCCESS",'
        'status="200",uri="/payments/authorize"} 1.0',
        'http_server_requests_seconds_count{application="ingest-service",method="POST",outcome="SUCCESS",'
        'status="200",uri="UNKNOWN"} 50.0',
        'http_server_requests_seconds_count{application="ingest-service",method="UNKNOWN",outcome="UNKNOWN",'
        'status="UNKNOWN",uri="/payments/authorize"} 50.0',
    ])


def test_collectors_come_from_metadata_once_per_entry() -> None:
    assert build_collectors([DEFINITION]) is None
    breaker = replace(DEFINITION, collectors=("circuitbreaker:kafka-publisher",))
    both = replace(DEFINITION, logical_id="Other", collectors=("circuitbreaker:kafka-publisher", "outbox"))
    collectors = build_collectors([breaker, both])
    assert collectors is not None
    assert [source.name for source in collectors.sources] == ["circuitbreaker:kafka-publisher", "outbox"]


@pytest.mark.parametrize("entry", ["histogram", "circuitbreaker", "outbox:extra"])
def test_bad_collector_entries_are_configuration_errors(entry: str) -> None:
    with pytest.raises(FunctionConfigError):
        build_collectors([replace(DEFINITION, collectors=(entry,))])


class _Source:
    def __init__(self, name: str, fail: bool) -> None:
        self.name = name
        self.fail = fail

    def collect(self) -> list[Metric]:
        if self.fail:
            raise ConnectionError("refused")
        family = GaugeMetricFamily(f"fixture_{self.name}", "a value")
        family.add_metric([], 7)
        return [family]


def test_a_failing_source_drops_its_series_and_reports_down() -> None:
    registry = CollectorRegistry()
    registry.register(HostCollectors([_Source("good", fail=False), _Source("bad", fail=True)]))
    text = generate_latest(registry).decode()
    assert "fixture_good 7.0" in text
    assert "fixture_bad" not in text
    assert 'payfn_collector_up{collector="good"} 1.0' in text
    assert 'payfn_collector_up{collector="bad"} 0.0' in text


def test_multiprocess_folders_of_dead_hosts_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"{MULTIPROCESS_DIR_PREFIX}999999999-abc"
    alive = tmp_path / f"{MULTIPROCESS_DIR_PREFIX}{os.getpid()}-abc"
    unrelated = tmp_path / "other-999999999-abc"
    for folder in (dead, alive, unrelated):
        folder.mkdir()
    created = new_multiprocess_dir(tmp_path)
    assert created.is_dir() and created.name.startswith(f"{MULTIPROCESS_DIR_PREFIX}{os.getpid()}-")
    assert not dead.exists()
    assert alive.exists() and unrelated.exists()
