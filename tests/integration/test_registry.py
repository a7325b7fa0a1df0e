"""The registry service against a real moto DynamoDB, driven by our client, raw HTTP,
a real Eureka client library (py-eureka-client) and a real Prometheus."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from payfn_shared.platform.config import Settings, load_settings
from payfn_shared.platform.registry import InstanceInfo, RegistryClient, RegistryError

from infra.registry.accounts import RegistryAccounts
from infra.registry.server import RegistryServer
from infra.stack.aws import dynamodb_client
from tests.integration.registry_support import (
    FakeClock,
    aws_endpoint,
    free_port,
    registry_client,
    running_registry,
    wait_until,
)


@pytest.fixture(scope="module")
def endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from aws_endpoint(request)


@pytest.fixture
def registry(endpoint: str) -> Iterator[RegistryServer]:
    with running_registry(endpoint) as server:
        yield server


@pytest.fixture
def client(registry: RegistryServer) -> RegistryClient:
    return registry_client(registry.url)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         account: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request; a write carries ``account`` (default: the stack's) as HTTP Basic."""
    sent = dict(headers or {})
    if method != "GET":
        user, password = account or load_settings().registry_credentials or ("", "")
        sent["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(url, data=body, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


JSON = {"Accept": "application/json"}


def instance(instance_id: str = "i-1", port: int = 9001, **kwargs: Any) -> InstanceInfo:
    return InstanceInfo("INGEST-SERVICE", instance_id, "127.0.0.1", port, **kwargs)


def test_register_renew_cancel(client: RegistryClient) -> None:
    client.register(instance(metadata={"version": "1"}))
    client.register(instance("i-2", 9002))
    (first, second) = client.instances("ingest-service")
    assert (first.instance_id, first.port, first.status) == ("i-1", 9001, "UP")
    assert first.metadata == {"version": "1"}
    assert first.last_renewal is not None and first.registration is not None
    assert second.instance_id == "i-2"
    assert client.renew("INGEST-SERVICE", "i-1") is True
    assert client.renew("INGEST-SERVICE", "never-registered") is False
    client.cancel("INGEST-SERVICE", "i-2")
    assert [i.instance_id for i in client.instances("INGEST-SERVICE")] == ["i-1"]
    assert client.renew("INGEST-SERVICE", "i-2") is False
    assert set(client.apps()) == {"INGEST-SERVICE"}
    assert client.instances("NO-SUCH-SERVICE") == []


def test_status_override_survives_reregistration(client: RegistryClient, registry: RegistryServer) -> None:
    client.register(instance())
    base = f"{registry.url}/eureka/apps/INGEST-SERVICE/i-1"
    assert http("PUT", f"{base}/status?value=OUT_OF_SERVICE")[0] == 200
    (seen,) = client.instances("INGEST-SERVICE")
    assert (seen.status, seen.overridden_status) == ("OUT_OF_SERVICE", "OUT_OF_SERVICE")
    client.register(instance())
    assert client.instances("INGEST-SERVICE")[0].status == "OUT_OF_SERVICE"
    assert http("DELETE", f"{base}/status")[0] == 200
    (seen,) = client.instances("INGEST-SERVICE")
    assert (seen.status, seen.overridden_status) == ("UP", "UNKNOWN")
    assert http("PUT", f"{base}/status?value=NONSENSE")[0] == 400
    assert http("PUT", f"{registry.url}/eureka/apps/INGEST-SERVICE/ghost/status?value=DOWN")[0] == 404


def test_metadata_update(client: RegistryClient, registry: RegistryServer) -> None:
    client.register(instance(metadata={"a": "1"}))
    url = f"{registry.url}/eureka/apps/INGEST-SERVICE/i-1/metadata?b=2&a=3"
    assert http("PUT", url)[0] == 200
    assert client.instances("INGEST-SERVICE")[0].metadata == {"a": "3", "b": "2"}


def test_json_shape_is_eurekas(client: RegistryClient, registry: RegistryServer) -> None:
    client.register(instance(metadata={"management.port": "9001"}))
    status, headers, body = http("GET", f"{registry.url}/eureka/apps", headers={"Accept": "application/json"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    applications = json.loads(body)["applications"]
    assert set(applications) == {"versions__delta", "apps__hashcode", "application"}
    assert applications["apps__hashcode"] == "UP_1_"
    (application,) = applications["application"]
    assert application["name"] == "INGEST-SERVICE"
    (item,) = application["instance"]
    assert item["port"] == {"$": 9001, "@enabled": "true"}
    assert item["dataCenterInfo"]["name"] == "MyOwn" and "@class" in item["dataCenterInfo"]
    assert set(item["leaseInfo"]) == {
        "renewalIntervalInSecs", "durationInSecs", "registrationTimestamp", "lastRenewalTimestamp",
        "evictionTimestamp", "serviceUpTimestamp",
    }
    for key in ("instanceId", "hostName", "app", "ipAddr", "status", "overriddenStatus", "securePort",
                "countryId", "metadata", "homePageUrl", "statusPageUrl", "healthCheckUrl", "vipAddress",
                "isCoordinatingDiscoveryServer", "lastUpdatedTimestamp", "lastDirtyTimestamp", "actionType"):
        assert key in item, key
    status, _, body = http("GET", f"{registry.url}/eureka/apps/INGEST-SERVICE/i-1",
                           headers={"Accept": "application/json"})
    assert status == 200 and json.loads(body)["instance"]["instanceId"] == "i-1"
    status, _, body = http("GET", f"{registry.url}/eureka/instances/i-1", headers=JSON)
    assert status == 200 and json.loads(body)["instance"]["app"] == "INGEST-SERVICE"
    assert http("GET", f"{registry.url}/eureka/apps/NOPE", headers=JSON)[0] == 404


def test_xml_is_the_default_and_eureka_shaped(client: RegistryClient, registry: RegistryServer) -> None:
    client.register(instance(metadata={"management.port": "9001"}))
    status, headers, body = http("GET", f"{registry.url}/eureka/apps/")
    assert status == 200 and headers["Content-Type"].startswith("application/xml")
    root = ElementTree.fromstring(body)  # noqa: S314 - the registry's own output
    assert root.tag == "applications"
    node = root.find("application/instance")
    assert node is not None
    port = node.find("port")
    assert port is not None and port.text == "9001" and port.get("enabled") == "true"
    assert node.findtext("overriddenstatus") == "UNKNOWN"
    assert node.findtext("metadata/management.port") == "9001"
    assert node.findtext("leaseInfo/durationInSecs") == "90"
    data_center = node.find("dataCenterInfo")
    assert data_center is not None and data_center.get("class", "").endswith("DefaultDataCenterInfo")
    status, _, body = http("GET", f"{registry.url}/eureka/apps/delta")
    delta = ElementTree.fromstring(body)  # noqa: S314 - the registry's own output
    assert delta.findtext("apps__hashcode") == "UP_1_"
    assert delta.findtext("application/instance/actionType") == "MODIFIED"


def test_xml_register_body(client: RegistryClient, registry: RegistryServer) -> None:
    body = b"""<instance><instanceId>x-1</instanceId><hostName>127.0.0.1</hostName><app>XML-APP</app>
    <ipAddr>127.0.0.1</ipAddr><status>STARTING</status><port enabled="true">7001</port>
    <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name>
    </dataCenterInfo><leaseInfo><durationInSecs>40</durationInSecs></leaseInfo>
    <metadata><zone>a</zone></metadata></instance>"""
    status, _, _ = http("POST", f"{registry.url}/eureka/apps/XML-APP", body,
                        {"Content-Type": "application/xml"})
    assert status == 204
    (seen,) = client.instances("XML-APP")
    assert (seen.port, seen.status, seen.lease_duration) == (7001, "STARTING", 40)
    assert seen.metadata == {"zone": "a"}
    xml = {"Content-Type": "application/xml"}
    assert http("POST", f"{registry.url}/eureka/apps/XML-APP", b"<instance>", xml)[0] == 400
    assert http("POST", f"{registry.url}/eureka/apps/XML-APP", b'{"instance": {"app": "X"}}',
                {"Content-Type": "application/json"})[0] == 400


def test_expired_leases_are_filtered_and_swept(endpoint: str) -> None:
    clock = FakeClock()
    with running_registry(endpoint, clock=clock) as server:
        client = registry_client(server.url)
        client.register(instance("short", 9001, lease_duration=5))
        client.register(instance("long", 9002, lease_duration=60))
        clock.advance(3)
        assert client.renew("INGEST-SERVICE", "short") is True
        clock.advance(4)
        assert {i.instance_id for i in client.instances("INGEST-SERVICE")} == {"short", "long"}
        clock.advance(2)
        assert [i.instance_id for i in client.instances("INGEST-SERVICE")] == ["long"]
        assert client.renew("INGEST-SERVICE", "short") is False
        assert [i.instance_id for i in server.store.all_instances(include_expired=True)] == ["long", "short"]
        assert [i.instance_id for i in server.sweep()] == ["short"]
        assert [i.instance_id for i in server.store.all_instances(include_expired=True)] == ["long"]


def test_health_metrics_dashboard(client: RegistryClient, registry: RegistryServer) -> None:
    client.register(instance())
    status, _, body = http("GET", f"{registry.url}/health")
    assert status == 200 and json.loads(body)["status"] == "UP"
    status, _, body = http("GET", f"{registry.url}/metrics")
    assert status == 200
    assert 'registry_instances{app="INGEST-SERVICE",status="UP"} 1.0' in body.decode()
    assert 'http_server_requests_seconds_count{application="registry"' in body.decode()
    status, headers, body = http("GET", f"{registry.url}/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"INGEST-SERVICE" in body and b"i-1" in body and b"UP" in body


def test_real_eureka_client_registers_and_discovers(client: RegistryClient, registry: RegistryServer) -> None:
    from py_eureka_client.eureka_client import EurekaClient

    client.register(instance())

    async def scenario() -> tuple[list[str], list[str]]:
        user, password = load_settings().registry_credentials or ("", "")
        eureka = EurekaClient(
            eureka_server=f"http://{user}:{password}@{registry.host}:{registry.port}/eureka/",
            app_name="demo-service", instance_id="demo-1",
            instance_host="127.0.0.1", instance_ip="127.0.0.1", instance_port=7777,
            renewal_interval_in_secs=30, duration_in_secs=90,
        )
        await eureka.start()
        try:
            application = eureka.applications.get_application("INGEST-SERVICE")
            discovered = [i.instanceId for i in application.up_instances]
            registered = [i.instance_id for i in client.instances("DEMO-SERVICE")]
        finally:
            await eureka.stop()
        return discovered, registered

    discovered, registered = asyncio.run(scenario())
    assert discovered == ["i-1"]
    assert registered == ["demo-1"]
    assert client.instances("DEMO-SERVICE") == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus binary not installed")
def test_prometheus_eureka_sd_finds_instances(client: RegistryClient, registry: RegistryServer) -> None:
    client.register(instance("i-1", 9001, metadata={"prometheus.path": "/metrics"}))
    client.register(instance("i-2", 9002))
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder, "prometheus.yml")
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: registry\n"
            "    eureka_sd_configs:\n"
            f"      - server: {registry.url}/eureka\n"
            "        refresh_interval: 1s\n"
        )
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder}/data",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            def targets() -> list[dict[str, Any]]:
                try:
                    status, _, body = http("GET", f"http://127.0.0.1:{port}/api/v1/targets")
                except OSError:
                    return []
                active = json.loads(body)["data"]["activeTargets"] if status == 200 else []
                return active if len(active) == 2 else []

            active = wait_until(targets, timeout=60, interval=0.5)
        finally:
            process.terminate()
            process.wait(timeout=20)
    addresses = sorted(t["discoveredLabels"]["__address__"] for t in active)
    assert addresses == ["127.0.0.1:9001", "127.0.0.1:9002"]
    labels = next(t["discoveredLabels"] for t in active if t["discoveredLabels"]["__address__"].endswith("1"))
    assert labels["__meta_eureka_app_instance_id"] == "i-1"
    assert labels["__meta_eureka_app_name"] == "INGEST-SERVICE"
    assert labels["__meta_eureka_app_instance_metadata_prometheus_path"] == "/metrics"
    assert labels["__meta_eureka_app_instance_status"] == "UP"


def test_cli_serves_and_stops_cleanly(endpoint: str) -> None:
    port = free_port()
    table = f"registry-cli-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PAYFN_AWS_ENDPOINT_URL": endpoint, "PAYFN_REGISTRY_TABLE": table,
           "PAYFN_REGISTRY_LEASE_DURATION": "20",
           "PAYFN_REGISTRY_RENEWAL_INTERVAL": "5", "PAYFN_REGISTRY_EVICTION_INTERVAL": "1"}
    process = subprocess.Popen([sys.executable, "-m", "infra.registry", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return http("GET", f"{url}/health")[0] == 200
            except OSError:
                return False

        wait_until(healthy)
        client = registry_client(url)
        client.register(InstanceInfo("CLI-APP", "c-1", "127.0.0.1", 9009))
        assert [i.instance_id for i in client.instances("CLI-APP")] == ["c-1"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        settings = Settings(aws_endpoint_url=endpoint)
        dynamodb_client(settings).delete_table(TableName=table)


def test_writes_need_the_registry_account(client: RegistryClient, registry: RegistryServer) -> None:
    """As a Eureka server behind Spring Security: 401 without (or with wrong) credentials, nothing changes."""
    client.register(instance())
    body = json.dumps({"instance": instance("i-rogue", 6666).to_eureka()}).encode()
    base = f"{registry.url}/eureka/apps/INGEST-SERVICE"
    user = load_settings().registry_user
    for account in (("", ""), (user, "wrong"), ("nobody", "x")):
        for method, url, payload in (("POST", base, body), ("PUT", f"{base}/i-1", None),
                                     ("PUT", f"{base}/i-1/status?value=OUT_OF_SERVICE", None),
                                     ("PUT", f"{base}/i-1/metadata?a=b", None),
                                     ("DELETE", f"{base}/i-1", None)):
            status, headers, _ = http(method, url, payload, {"Content-Type": "application/json"}, account)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), (account, method, url)
    (seen,) = client.instances("INGEST-SERVICE")
    assert (seen.instance_id, seen.status, seen.metadata) == ("i-1", "UP", {})
    assert RegistryClient(registry.url).instances("INGEST-SERVICE")  # reads stay open


def test_an_instance_belongs_to_the_account_that_registered_it(endpoint: str, tmp_path: Path) -> None:
    settings = load_settings()
    accounts_file = tmp_path / "accounts"
    accounts_file.write_text("other:other-secret\n", encoding="utf-8")
    accounts = RegistryAccounts.from_settings(replace(settings, registry_accounts_file=str(accounts_file)))
    with running_registry(endpoint, accounts=accounts) as server:
        mine = registry_client(server.url)
        theirs = RegistryClient(server.url, timeout=10, credentials=("other", "other-secret"))
        mine.register(instance())
        with pytest.raises(RegistryError, match="403"):
            theirs.register(instance(port=6666))  # the same id: no take-over
        with pytest.raises(RegistryError, match="403"):
            theirs.renew("INGEST-SERVICE", "i-1")
        with pytest.raises(RegistryError, match="403"):
            theirs.cancel("INGEST-SERVICE", "i-1")
        status, _, _ = http("PUT", f"{server.url}/eureka/apps/INGEST-SERVICE/i-1/status?value=DOWN",
                            account=("other", "other-secret"))
        assert status == 403
        (seen,) = mine.instances("INGEST-SERVICE")
        assert (seen.port, seen.status) == (9001, "UP")
        theirs.register(instance("i-2", 9002))
        assert mine.renew("INGEST-SERVICE", "i-1") and theirs.renew("INGEST-SERVICE", "i-2")
        with pytest.raises(RegistryError, match="403"):
            mine.cancel("INGEST-SERVICE", "i-2")
        theirs.cancel("INGEST-SERVICE", "i-2")
        assert [i.instance_id for i in mine.instances("INGEST-SERVICE")] == ["i-1"]


def test_a_bad_stored_lease_is_left_out_and_never_breaks_a_listing(client: RegistryClient,
                                                                   registry: RegistryServer) -> None:
    """Leases written before validation existed (or by another writer) must not break every client."""
    client.register(instance())
    client.register(instance("i-bad", 9002))
    client.register(instance("i-worse", 9003))
    table, key = registry.store.table, {"app": {"S": "INGEST-SERVICE"}}
    dynamo = registry.store._db
    dynamo.update_item(TableName=table, Key={**key, "instanceId": {"S": "i-bad"}},
                       UpdateExpression="SET #d = :d", ExpressionAttributeNames={"#d": "document"},
                       ExpressionAttributeValues={":d": {"S": '{"countryId": "abc"}'}})
    dynamo.update_item(TableName=table, Key={**key, "instanceId": {"S": "i-worse"}},
                       UpdateExpression="SET metadata = :m",
                       ExpressionAttributeValues={":m": {"M": {"k": {"S": "v\x01"}}}})
    assert [i.instance_id for i in client.instances("INGEST-SERVICE")] == ["i-1"]
    status, _, body = http("GET", f"{registry.url}/eureka/apps", headers={"Accept": "application/xml"})
    root = ElementTree.fromstring(body)  # noqa: S314 - the registry under test wrote it
    assert status == 200 and [e.text for e in root.iter("instanceId")] == ["i-1"]
