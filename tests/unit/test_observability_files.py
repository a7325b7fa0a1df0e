"""observability/: Prometheus config, alert rules and Grafana files, checked with promtool.

promtool (Debian package ``prometheus``) parses the configuration and every PromQL
expression exactly as Prometheus will, so a typo fails here rather than in a scrape.
Whether the dashboards' queries return data is ``tests/e2e/test_dashboard_queries.py``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from payfn_shared.platform.config import Settings

from infra.stack.observability import render_prometheus_config
from tests.observability_support import (
    DASHBOARD_PROVIDERS,
    DATASOURCES,
    OBSERVABILITY,
    OUR_DASHBOARD,
    SEED_DASHBOARD,
    dashboard_queries,
    load_dashboard,
    panels,
    promtool,
)


def run_promtool(*args: str) -> str:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def payfn_job(config: dict[str, Any]) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    return jobs["payfn"]


def test_rendered_config_passes_promtool_with_the_configured_addresses(tmp_path: Path) -> None:
    target = tmp_path / "prometheus" / "prometheus.yml"
    render_prometheus_config(Settings(registry_port=18761, prometheus_port=19090), target)
    run_promtool("check", "config", str(target))
    config = load_yaml(target)
    assert payfn_job(config)["eureka_sd_configs"][0]["server"] == "http://127.0.0.1:18761/eureka"
    assert (target.parent / "alerts.yml").read_text() == (OBSERVABILITY / "alerts.yml").read_text()


def test_targets_come_from_the_registry_with_their_metrics_path() -> None:
    job = payfn_job(load_yaml(OBSERVABILITY / "prometheus.yml"))
    assert job["eureka_sd_configs"], "targets must be discovered from the registry"
    relabels = {tuple(rule.get("source_labels", [])): rule for rule in job["relabel_configs"]}
    metrics_path = relabels[("__meta_eureka_app_instance_metadata_metricsPath",)]
    assert metrics_path["target_label"] == "__metrics_path__"
    assert relabels[("__meta_eureka_app_instance_status",)] == {
        "source_labels": ["__meta_eureka_app_instance_status"], "regex": "UP", "action": "keep"}
    # The poller registers as EVENT-SOURCE-POLLER but labels its series application="consumer-worker".
    assert job["honor_labels"] is True


def test_alert_rules_pass_promtool() -> None:
    run_promtool("check", "rules", str(OBSERVABILITY / "alerts.yml"))


def test_alert_rules_unit_tests_pass() -> None:
    run_promtool("test", "rules", str(OBSERVABILITY / "tests" / "alerts_test.yml"))


def test_every_alert_has_a_unit_test_and_the_required_ones_exist() -> None:
    rules = load_yaml(OBSERVABILITY / "alerts.yml")
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    tests = load_yaml(OBSERVABILITY / "tests" / "alerts_test.yml")
    tested = {case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])}
    assert alerts == tested
    assert {"PayfnInstanceDown", "PayfnHigh5xxRate", "PayfnCircuitBreakerOpen", "PayfnOutboxBacklogStale",
            "PayfnConsumerLagHigh"} <= alerts


def test_seed_panels_are_kept_with_their_queries_unchanged() -> None:
    ours = {panel["id"]: panel for panel in panels(load_dashboard(OUR_DASHBOARD))}
    for seed_panel in panels(load_dashboard(SEED_DASHBOARD)):
        panel = ours.get(seed_panel["id"])
        assert panel is not None, seed_panel["title"]
        assert (panel["title"], panel["type"]) == (seed_panel["title"], seed_panel["type"])
        assert panel["targets"] == seed_panel["targets"], seed_panel["title"]
        assert panel["datasource"] == seed_panel["datasource"]


def test_dashboard_identity_layout_and_datasource() -> None:
    dashboard = load_dashboard(OUR_DASHBOARD)
    seed = load_dashboard(SEED_DASHBOARD)
    assert (dashboard["uid"], dashboard["title"]) == (seed["uid"], seed["title"])
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    datasource_uids = {source["uid"] for source in load_yaml(DATASOURCES)["datasources"]}
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] in datasource_uids, panel["title"]
            assert panel["targets"], panel["title"]
    titles = " ".join(panel["title"] for panel in panels(dashboard))
    for topic in ("Outbox", "Consumer Lag", "Invocations", "Errors, Throttles", "Duration", "Cold Starts",
                  "Concurrent Executions"):
        assert topic in titles


@pytest.mark.parametrize("dashboard", [SEED_DASHBOARD, OUR_DASHBOARD], ids=["seed", "ours"])
def test_every_dashboard_query_is_valid_promql(dashboard: Path, tmp_path: Path) -> None:
    """promtool parses each query as a recording rule: Prometheus' own PromQL parser."""
    queries = dashboard_queries(dashboard)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": query.expr} for index, query in enumerate(queries)]}]}
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    run_promtool("check", "rules", str(path))


def test_grafana_provisioning_files() -> None:
    datasources = load_yaml(DATASOURCES)
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert (source["type"], source["uid"]) == ("prometheus", "prometheus")
    assert source["url"] == Settings().prometheus_url
    providers = load_yaml(DASHBOARD_PROVIDERS)
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    json.loads(OUR_DASHBOARD.read_text(encoding="utf-8"))
