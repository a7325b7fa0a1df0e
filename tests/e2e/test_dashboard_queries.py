"""Every dashboard query returns data from the live Prometheus once traffic has flowed.

The contract (SPEC "Observability"): each query of the seed's dashboard
(``../shared/seed/payment-overview.json``), unchanged, and each query of ours
returns data; Prometheus finds every payfn process through the registry and
scrapes it. Traffic goes through the gateway: payments authorized, captured and
refunded (so events flow to the consumers), plus 4xx answers.

5xx: well-formed traffic gets none, and this test must not break a shared
dependency to provoke one. So it sends each ingest instance, on the Invoke API the
gateway itself uses, a proxy event whose ``headers`` is not an object: the handler
fails as a bug would, and the host records what API Gateway answers, a 502.

Prometheus scrapes every 5 s and ``rate(...[5m])`` needs two samples, so the test
keeps a trickle of traffic going while it polls, with a bound.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest
from payfn_shared.platform.config import Settings
from payfn_shared.platform.registry import InstanceInfo, RegistryClient

from tests.e2e.gateway_client import call
from tests.invoke_auth import invoke_headers
from tests.observability_support import OUR_DASHBOARD, SEED_DASHBOARD, PanelQuery, dashboard_queries

DEADLINE_SECONDS = 150
#: Processes every stack runs; the consumer panels need the event-source poller.
REQUIRED_APPS = ("API-GATEWAY", "INGEST-SERVICE", "CONSUMER-WORKER", "MONITORING-SERVICE",
                 "EVENT-SOURCE-POLLER")


def prometheus_get(settings: Settings, path: str, **params: str) -> Any:
    url = f"{settings.prometheus_url}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        document = json.loads(response.read())
    assert document["status"] == "success", document
    return document["data"]


def has_data(settings: Settings, expr: str) -> bool:
    """Whether the query returns at least one sample that is a number (not NaN)."""
    data = prometheus_get(settings, "/api/v1/query", query=expr)
    if data["resultType"] == "scalar":
        return not math.isnan(float(data["result"][1]))
    return any(not math.isnan(float(series["value"][1])) for series in data["result"])


def payment_flow(settings: Settings, merchant: str) -> None:
    """authorize → capture → refund → get (200s), plus a 400 and a 404, through the gateway."""
    base = settings.gateway_url
    authorized = call(base, "POST", "/api/payments/authorize", {
        "merchantId": merchant, "amount": 1200, "currency": "USD", "idempotencyKey": uuid.uuid4().hex})
    assert authorized.status == 200, authorized.body
    payment_id = authorized.json()["paymentId"]
    captured = call(base, "POST", f"/api/payments/capture/{payment_id}", {"merchantId": merchant})
    assert captured.status == 200, captured.body
    refunded = call(base, "POST", f"/api/payments/refund/{payment_id}",
                    {"merchantId": merchant, "reason": "test"})
    assert refunded.status == 200, refunded.body
    assert call(base, "GET", f"/api/payments/{payment_id}?merchantId={merchant}").status == 200
    invalid = call(base, "POST", "/api/payments/authorize", {"merchantId": merchant, "amount": -1})
    assert invalid.status == 400, invalid.body
    unknown = call(base, "POST", f"/api/payments/capture/{uuid.uuid4()}", {"merchantId": merchant})
    assert unknown.status == 404, unknown.body


def failing_invocation(instance: InstanceInfo) -> None:
    """A proxy event the authorize handler cannot read: a function error, 502 for the client."""
    event = {"resource": "/payments/authorize", "path": "/payments/authorize", "httpMethod": "POST",
             "headers": "not-an-object", "requestContext": {"stage": "v1"}, "body": "{}",
             "isBase64Encoded": False}
    invoke_path = instance.metadata.get("invokePath", "/2015-03-31/functions")
    request = urllib.request.Request(f"{instance.base_url}{invoke_path}/AuthorizeFunction/invocations",
                                     data=json.dumps(event).encode(), method="POST", headers=invoke_headers())
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.headers.get("X-Amz-Function-Error") == "Unhandled"


def registered(settings: Settings) -> list[InstanceInfo]:
    apps = RegistryClient(settings.registry_url, timeout=5).apps()
    return [instance for instances in apps.values() for instance in instances if instance.status == "UP"]


@pytest.fixture(scope="module")
def traffic(platform: Any) -> str:
    """A merchant whose first payments have gone through, and one 5xx per ingest instance."""
    settings: Settings = platform.settings
    merchant = f"OBS{uuid.uuid4().hex[:12]}"
    for _ in range(3):
        payment_flow(settings, merchant)
    ingest = [instance for instance in registered(settings) if instance.app == "INGEST-SERVICE"]
    assert ingest, "no INGEST-SERVICE instance is registered"
    for instance in ingest:
        failing_invocation(instance)
    return merchant


def unanswered(settings: Settings, queries: list[PanelQuery], merchant: str) -> list[PanelQuery]:
    """Poll (with traffic flowing) until every query has data or the deadline passes; what is left."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    pending = list(queries)
    while True:
        pending = [query for query in pending if not has_data(settings, query.expr)]
        if not pending or time.monotonic() > deadline:
            return pending
        payment_flow(settings, merchant)
        time.sleep(2)


@pytest.mark.parametrize("dashboard", [SEED_DASHBOARD, OUR_DASHBOARD], ids=["seed", "ours"])
def test_every_panel_query_returns_data(platform: Any, traffic: str, dashboard: Any) -> None:
    queries = dashboard_queries(dashboard)
    assert queries
    missing = unanswered(platform.settings, queries, traffic)
    assert not missing, "queries without data after traffic:\n" + "\n".join(map(str, missing))


def test_prometheus_scrapes_every_registered_process(platform: Any) -> None:
    settings: Settings = platform.settings
    deadline = time.monotonic() + 60
    while True:
        instances = registered(settings)
        targets = {target["labels"].get("instance"): target
                   for target in prometheus_get(settings, "/api/v1/targets", state="active")["activeTargets"]
                   if target["labels"].get("job") == "payfn"}
        problems = []
        for instance in instances:
            target = targets.get(instance.instance_id)
            expected_url = f"{instance.base_url}{instance.metadata.get('metricsPath', '/metrics')}"
            if target is None:
                problems.append(f"{instance.app} {instance.instance_id}: not a Prometheus target")
            elif target["health"] != "up" or target["scrapeUrl"] != expected_url:
                problems.append(f"{instance.app} {instance.instance_id}: {target['health']} "
                                f"{target['scrapeUrl']} {target.get('lastError')}")
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not problems, "\n".join(problems)
    apps = {instance.app for instance in instances}
    assert set(REQUIRED_APPS) <= apps, f"not registered: {sorted(set(REQUIRED_APPS) - apps)}"
    for instance in instances:
        assert targets[instance.instance_id]["labels"]["service"] == instance.app
