"""The status page's HTML from given registry content and Prometheus figures (no services)."""

from __future__ import annotations

from dataclasses import dataclass

from payfn_shared.monitoring.prometheus import PrometheusClient

from infra.registry.status import Vitals, read_vitals, render_page


@dataclass
class FakeInstance:
    app: str
    instance_id: str
    host_name: str
    port: int
    status: str


APPS = {
    "INGEST-SERVICE": [FakeInstance("INGEST-SERVICE", "vm:INGEST-SERVICE:1", "127.0.0.1", 1, "UP"),
                       FakeInstance("INGEST-SERVICE", "vm:INGEST-SERVICE:2", "127.0.0.1", 2, "DOWN")],
    "API-GATEWAY": [FakeInstance("API-GATEWAY", "vm:api-gateway:8080", "127.0.0.1", 8080, "UP")],
}


def test_page_shows_instances_breaker_backlog_lag_and_alerts() -> None:
    vitals = Vitals(request_rate=12.5, error_share=0.02, breakers={"kafka-publisher": "OPEN"},
                    failure_rates={"kafka-publisher": 75.0}, outbox_backlog=42, outbox_oldest_seconds=90.5,
                    consumer_lag={"payfn-ledger-captured": 3, "payfn-balance-captured": 4},
                    targets_up={"INGEST-SERVICE": 1, "API-GATEWAY": 1},
                    alerts=[{"alertname": "PayfnCircuitBreakerOpen", "severity": "critical",
                             "name": "kafka-publisher", "state": "open"}])
    page = render_page(APPS, vitals, 0)
    assert '<meta http-equiv="refresh" content="5">' in page
    assert '<td id="instances-INGEST-SERVICE">1</td><td>2</td>' in page
    assert 'id="breaker-state-kafka-publisher">OPEN<' in page
    assert 'id="outbox-backlog">42<' in page
    assert 'id="outbox-oldest">90.5 s<' in page
    assert 'id="consumer-lag">7<' in page
    assert 'id="request-rate">12.50<' in page
    assert 'id="error-share">2.00 %<' in page
    assert "PayfnCircuitBreakerOpen</b> [critical] name=kafka-publisher state=open" in page
    assert '<tr class="bad"><td>INGEST-SERVICE</td>' in page


def test_untrusted_text_is_escaped() -> None:
    apps = {"X": [FakeInstance("X", "<script>alert(1)</script>", "h", 1, "UP")]}
    page = render_page(apps, Vitals(), 0)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_prometheus_down_still_renders_the_registry_part() -> None:
    vitals = read_vitals(PrometheusClient("http://127.0.0.1:1", 0.5))
    assert vitals.error is not None
    page = render_page(APPS, vitals, 0)
    assert 'id="prometheus-error"' in page
    assert '<td id="instances-API-GATEWAY">1</td>' in page
    assert 'id="breaker-state-kafka-publisher">—<' in page
