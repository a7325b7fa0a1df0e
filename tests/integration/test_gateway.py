"""The gateway with a real registry (over moto) and Invoke-API stubs as function hosts."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from payfn_shared.platform.registry import InstanceInfo

from infra.registry.server import RegistryServer
from tests.gateway_support import (
    DroppingHost,
    GatewayThread,
    InvokeStub,
    gateway_thread,
    wait_for,
    write_template,
)
from tests.integration.registry_support import aws_endpoint, free_port, registry_client, running_registry


@pytest.fixture(scope="module")
def endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from aws_endpoint(request)


@pytest.fixture
def registry(endpoint: str) -> Iterator[RegistryServer]:
    with running_registry(endpoint, cache_ttl=0.0) as server:
        yield server


@pytest.fixture
def stubs() -> Iterator[list[InvokeStub]]:
    servers = [InvokeStub("host-a"), InvokeStub("host-b")]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def template(tmp_path: Path) -> Path:
    return write_template(tmp_path)


def register(registry: RegistryServer, app: str, name: str, port: int, status: str = "UP") -> None:
    client = registry_client(registry.url)
    client.register(InstanceInfo(app, name, "127.0.0.1", port, status=status))


@pytest.fixture
def gateway(template: Path, registry: RegistryServer, stubs: list[InvokeStub]) -> Iterator[GatewayThread]:
    for stub in stubs:
        register(registry, "INGEST-SERVICE", stub.name, stub.port)
    with gateway_thread(template, registry.url) as running:
        yield running


def test_round_robin_over_two_instances(gateway: GatewayThread) -> None:
    seen = []
    for _ in range(6):
        status, headers, _body = gateway.request("GET", "/api/payments/p-1?merchantId=M1")
        assert status == 200
        seen.append(headers["x-instance"])
    assert seen[0] != seen[1] and seen[0::2] == [seen[0]] * 3 and seen[1::2] == [seen[1]] * 3


def test_event_reaches_the_function_stripped(gateway: GatewayThread, stubs: list[InvokeStub]) -> None:
    status, headers, body = gateway.request(
        "POST", "/api/payments/authorize", b'{"amount": 1}',
        {"Content-Type": "application/json", "X-Request-Id": "req-42"})
    assert status == 200 and headers["x-request-id"] == "req-42"
    event = json.loads(body)["event"]
    assert event["path"] == "/payments/authorize" and event["resource"] == "/payments/authorize"
    assert event["httpMethod"] == "POST" and event["body"] == '{"amount": 1}'
    assert event["requestContext"]["stage"] == "v1" and event["headers"]["X-Request-Id"] == "req-42"
    invoked = [e["function"] for stub in stubs for e in stub.events]
    assert invoked == ["AuthorizeFunction"]


def test_http_api_event_for_httpapi_functions(gateway: GatewayThread, registry: RegistryServer,
                                              stubs: list[InvokeStub]) -> None:
    register(registry, "MONITORING-SERVICE", "mon-1", stubs[0].port)
    gateway.refresh()
    status, _, body = gateway.request("GET", "/api/monitoring/health?x=1&x=2", headers={"Cookie": "a=1; b=2"})
    assert status == 200
    event = json.loads(body)["event"]
    assert event["version"] == "2.0" and event["routeKey"] == "GET /monitoring/{check}"
    assert event["rawPath"] == "/monitoring/health" and event["rawQueryString"] == "x=1&x=2"
    assert event["queryStringParameters"] == {"x": "1,2"} and event["cookies"] == ["a=1", "b=2"]
    assert event["pathParameters"] == {"check": "health"}


def test_dead_instance_is_skipped_without_client_failure(template: Path, registry: RegistryServer,
                                                        stubs: list[InvokeStub]) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    register(registry, "INGEST-SERVICE", "dead", dead_port)
    register(registry, "INGEST-SERVICE", stubs[0].name, stubs[0].port)
    with gateway_thread(template, registry.url) as gateway:
        statuses = [gateway.request("GET", "/api/payments/p-1")[0] for _ in range(6)]
        assert statuses == [200] * 6
        metrics = gateway.request("GET", "/actuator/prometheus")[2].decode()
    assert 'gateway_upstream_retries_total{kind="connect_failure",service="INGEST-SERVICE"} 1.0' in metrics
    assert len(stubs[0].events) == 6


@pytest.fixture
def dropper() -> Iterator[DroppingHost]:
    host = DroppingHost("a-dropper")  # sorts first: the gateway's first pick
    yield host
    host.stop()


def quarantined(gateway: GatewayThread) -> list[str]:
    return json.loads(gateway.request("GET", "/actuator/health")[2])["components"]["registry"]["details"][
        "quarantined"]


def test_connection_lost_before_the_answer_is_retried_where_idempotent(
        template: Path, registry: RegistryServer, stubs: list[InvokeStub], dropper: DroppingHost) -> None:
    """GET, and POST /payments/authorize (dedupes on its idempotency key), are re-sent to another instance."""
    register(registry, "INGEST-SERVICE", dropper.name, dropper.port)
    register(registry, "INGEST-SERVICE", stubs[0].name, stubs[0].port)
    with gateway_thread(template, registry.url, gateway_probe_interval=60.0) as gateway:
        status, headers, _ = gateway.request("GET", "/api/payments/p-1")
        assert (status, headers["x-instance"]) == (200, stubs[0].name)
        assert quarantined(gateway) == [dropper.name]
        assert gateway.request("GET", "/api/payments/p-2")[0] == 200
        metrics = gateway.request("GET", "/actuator/prometheus")[2].decode()
    assert dropper.requests == ["/2015-03-31/functions/GetPaymentFunction/invocations"]
    assert 'gateway_upstream_retries_total{kind="connection_lost",service="INGEST-SERVICE"} 1.0' in metrics

    dropper.requests.clear()
    with gateway_thread(template, registry.url, gateway_probe_interval=60.0) as gateway:
        status, _, body = gateway.request("POST", "/api/payments/authorize", b'{"amount": 1}',
                                          {"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["instance"] == stubs[0].name
    assert dropper.requests == ["/2015-03-31/functions/AuthorizeFunction/invocations"]


def test_connection_lost_on_a_capture_is_not_retried(
        template: Path, registry: RegistryServer, stubs: list[InvokeStub], dropper: DroppingHost) -> None:
    """A capture may have committed before the connection broke: re-sent, it would answer 409."""
    register(registry, "INGEST-SERVICE", dropper.name, dropper.port)
    register(registry, "INGEST-SERVICE", stubs[0].name, stubs[0].port)
    with gateway_thread(template, registry.url, gateway_probe_interval=60.0) as gateway:
        status, _, body = gateway.request("POST", "/api/payments/capture/p-1", b"{}",
                                          {"Content-Type": "application/json"})
        assert (status, json.loads(body)) == (502, {"message": "Internal server error"})
        assert quarantined(gateway) == [dropper.name]
        assert gateway.request("POST", "/api/payments/capture/p-1", b"{}")[0] == 200
    assert dropper.requests == ["/2015-03-31/functions/CaptureFunction/invocations"]
    assert [e["function"] for e in stubs[0].events] == ["CaptureFunction"]


def test_an_answer_that_started_is_never_retried(template: Path, registry: RegistryServer,
                                                stubs: list[InvokeStub]) -> None:
    partial = DroppingHost("a-partial", partial=True)
    try:
        register(registry, "INGEST-SERVICE", partial.name, partial.port)
        register(registry, "INGEST-SERVICE", stubs[0].name, stubs[0].port)
        with gateway_thread(template, registry.url) as gateway:
            status, _, body = gateway.request("GET", "/api/payments/p-1")
            assert (status, json.loads(body)) == (502, {"message": "Internal server error"})
            assert quarantined(gateway) == [partial.name]
    finally:
        partial.stop()
    assert len(partial.requests) == 1 and stubs[0].events == []


def test_a_5xx_answer_is_never_retried(template: Path, registry: RegistryServer,
                                       stubs: list[InvokeStub]) -> None:
    """The function ran (and failed): re-running it is the client's decision."""
    register(registry, "INGEST-SERVICE", stubs[0].name, stubs[0].port)
    register(registry, "INGEST-SERVICE", stubs[1].name, stubs[1].port)
    with gateway_thread(template, registry.url) as gateway:
        assert gateway.request("GET", "/api/payments/p-1?mode=error")[0] == 502
    assert len(stubs[0].events) + len(stubs[1].events) == 1


def test_quarantine_ends_when_the_instance_accepts_connections(
        template: Path, registry: RegistryServer, stubs: list[InvokeStub], dropper: DroppingHost) -> None:
    """A live instance whose connection broke is back after a probe (it may be the only one)."""
    register(registry, "INGEST-SERVICE", dropper.name, dropper.port)
    register(registry, "INGEST-SERVICE", stubs[0].name, stubs[0].port)
    with gateway_thread(template, registry.url, gateway_probe_interval=0.2) as gateway:
        assert gateway.request("GET", "/api/payments/p-1")[0] == 200
        wait_for(lambda: quarantined(gateway) == [])
        assert gateway.request("GET", "/api/payments/p-2")[0] == 200
    assert len(dropper.requests) == 2


def test_no_instance_is_503_with_error_body(template: Path, registry: RegistryServer) -> None:
    register(registry, "INGEST-SERVICE", "down-1", free_port(), status="DOWN")
    with gateway_thread(template, registry.url) as gateway:
        status, _, body = gateway.request("GET", "/api/payments/p-1")
    assert status == 503
    error = json.loads(body)
    assert error["code"] == "SERVICE_UNAVAILABLE" and error["paymentId"] is None and error["message"]


def test_unknown_routes_are_404_json(gateway: GatewayThread) -> None:
    status, headers, body = gateway.request("GET", "/nowhere")
    assert status == 404 and headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == "NOT_FOUND"
    status, _, body = gateway.request("GET", "/api/payments/a/b/c")
    assert status == 404 and json.loads(body)["code"] == "NOT_FOUND"
    assert gateway.request("DELETE", "/api/payments/authorize")[0] == 405


def test_cors_preflight_answered_by_the_gateway(gateway: GatewayThread, stubs: list[InvokeStub]) -> None:
    status, headers, _ = gateway.request("OPTIONS", "/api/payments/authorize", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert status == 200
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "GET,POST,OPTIONS"
    assert headers["access-control-allow-headers"] == "Content-Type,Idempotency-Key,X-Request-Id"
    assert headers["access-control-max-age"] == "600"
    assert not any(stub.events for stub in stubs)
    _, headers, _ = gateway.request("GET", "/api/payments/p-1", headers={"Origin": "https://shop.example"})
    assert headers["access-control-allow-origin"] == "*"


def test_body_limit_is_413(template: Path, registry: RegistryServer, stubs: list[InvokeStub]) -> None:
    register(registry, "INGEST-SERVICE", stubs[0].name, stubs[0].port)
    with gateway_thread(template, registry.url, gateway_max_body_bytes=100) as gateway:
        status, headers, body = gateway.request("POST", "/api/payments/authorize", b"x" * 101,
                                                {"Content-Type": "application/json"})
        assert status == 413 and json.loads(body)["code"] == "PAYLOAD_TOO_LARGE"
        assert headers["x-request-id"]
        assert gateway.request("POST", "/api/payments/authorize", b"x" * 100,
                               {"Content-Type": "application/json"})[0] == 200
    assert len(stubs[0].events) == 1


def test_expect_100_continue(gateway: GatewayThread) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /api/payments/authorize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"{}")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_request_id_generated_and_echoed(gateway: GatewayThread, stubs: list[InvokeStub]) -> None:
    status, headers, body = gateway.request("GET", "/api/payments/p-1")
    assert status == 200 and len(headers["x-request-id"]) == 36
    event = json.loads(body)["event"]
    assert event["headers"]["X-Request-Id"] == headers["x-request-id"]


def test_function_failures_map_like_api_gateway(gateway: GatewayThread) -> None:
    cases = {"error": (502, "Internal server error"), "timeout": (504, "Endpoint request timed out"),
             "throttle": (429, "Too Many Requests"), "malformed": (502, "Internal server error")}
    for mode, (status, message) in cases.items():
        got, _, body = gateway.request("GET", f"/api/payments/p-1?mode={mode}")
        assert (got, json.loads(body)) == (status, {"message": message}), mode
    status, headers, body = gateway.request("GET", "/api/payments/p-1?mode=binary")
    assert status == 200 and body == b"\x00\x01\x02"
    assert headers["content-type"] == "application/octet-stream"


def test_slow_function_is_504(template: Path, registry: RegistryServer, stubs: list[InvokeStub]) -> None:
    register(registry, "INGEST-SERVICE", stubs[0].name, stubs[0].port)
    with gateway_thread(template, registry.url, gateway_integration_timeout=0.3) as gateway:
        status, _, body = gateway.request("GET", "/api/payments/p-1?mode=sleep&seconds=1")
        assert (status, json.loads(body)) == (504, {"message": "Endpoint request timed out"})
        assert gateway.request("GET", "/api/payments/p-1")[0] == 200


def test_forwarding_headers_reach_the_function(gateway: GatewayThread) -> None:
    _, _, body = gateway.request("GET", "/api/payments/p-1", headers={"X-Forwarded-For": "203.0.113.9"})
    headers = json.loads(body)["event"]["headers"]
    assert headers["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http" and headers["X-Forwarded-Port"] == str(gateway.port)


def test_template_edits_are_picked_up(gateway: GatewayThread, template: Path) -> None:
    assert gateway.request("GET", "/api/payments/reports/daily")[0] == 404
    template.write_text(template.read_text(encoding="utf-8") + """
  ReportFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Tags: {payfn:service: INGEST-SERVICE}
      Events:
        Daily:
          Type: Api
          Properties: {RestApiId: !Ref PayfnApi, Path: /payments/reports/daily, Method: GET}
""", encoding="utf-8")
    os.utime(template, (time.time() + 5, time.time() + 5))
    wait_for(lambda: gateway.request("GET", "/api/payments/reports/daily")[0] == 200)


def test_multi_value_headers_and_status(gateway: GatewayThread) -> None:
    headers = gateway.headers_all("GET", "/api/payments/p-1?mode=created")
    assert [v for k, v in headers if k.lower() == "set-cookie"] == ["a=1", "b=2"]


def test_actuator_health_and_prometheus(gateway: GatewayThread) -> None:
    gateway.request("GET", "/api/payments/p-1")
    status, _, body = gateway.request("GET", "/actuator/health")
    health = json.loads(body)
    assert status == 200 and health["status"] == "UP"
    assert health["components"]["registry"]["status"] == "UP"
    text = gateway.request("GET", "/actuator/prometheus")[2].decode()
    assert ('spring_cloud_gateway_requests_seconds_count{httpMethod="GET",httpStatusCodeName="OK",'
            'outcome="SUCCESSFUL",routeId="payments",routeUri="lb://INGEST-SERVICE",'
            'status="200"} 1.0') in text
    assert ('http_server_requests_seconds_count{application="gateway",method="GET",outcome="SUCCESS",'
            'status="200",uri="/api/payments/{paymentId}"} 1.0') in text


def test_health_reports_unreachable_registry(template: Path) -> None:
    with gateway_thread(template, f"http://127.0.0.1:{free_port()}") as gateway:
        status, _, body = gateway.request("GET", "/actuator/health")
        assert status == 200
        assert json.loads(body)["components"]["registry"]["status"] == "DOWN"
        assert gateway.request("GET", "/api/payments/p-1")[0] == 503


def test_prometheus_exposition_is_rendered_off_the_event_loop(gateway: GatewayThread) -> None:
    """Rendering takes tens of ms once label sets have grown; on the loop it would stall every request."""
    threads: list[str] = []
    render = gateway.gateway.metrics.render

    def recording_render() -> bytes:
        threads.append(threading.current_thread().name)
        return render()

    gateway.gateway.metrics.render = recording_render  # type: ignore[method-assign]
    status, headers, body = gateway.request("GET", "/actuator/prometheus")
    assert status == 200 and headers["content-type"].startswith("text/plain") and b"gateway_requests" in body
    assert len(threads) == 1 and threads[0].startswith("scrape") and threads[0] != gateway.thread.name
