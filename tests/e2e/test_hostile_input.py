"""Hostile input at every listener payfn runs, on the live stack: a clear 4xx, never a 5xx or a reset.

Listeners: the gateway, a function host's Invoke API, the registry, the scheduler's and the
event-source poller's status endpoints, and an MCP server's streamable HTTP. They all answer
through ``infra.net.server``; this suite proves it from outside, class of input by class.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from payfn_shared.platform.config import Settings, load_settings
from payfn_shared.platform.registry import RegistryClient

from infra.net.invoke import INVOKE_TOKEN_HEADER
from infra.sam.template import REPO_ROOT
from infra.stack.process import free_port, port_open
from tests.e2e.gateway_client import call
from tests.hostile import Answer, chunked_upload, deep_json, exchange, request, stalled_body
from tests.integration.registry_support import wait_until


@dataclass(frozen=True)
class Listener:
    name: str
    host: str
    port: int
    #: A path that takes a JSON body, and the headers a legitimate caller sends.
    post_path: str
    headers: dict[str, str]

    def send(self, raw: bytes, timeout: float = 10.0) -> Answer:
        return exchange(self.host, self.port, raw, timeout)

    def post(self, body: bytes, content_type: str = "application/json") -> Answer:
        return self.send(
            request("POST", self.post_path, self.host, {**self.headers, "Content-Type": content_type}, body)
        )


def _basic(settings: Settings) -> dict[str, str]:
    token = base64.b64encode(f"{settings.registry_user}:{settings.registry_password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _instance(settings: Settings, app: str) -> Any:
    instances = [
        i for i in RegistryClient(settings.registry_url, timeout=5).instances(app) if i.status == "UP"
    ]
    assert instances, f"no UP instance of {app}"
    return instances[0]


@pytest.fixture(scope="module")
def mcp_http(platform: Any) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "payfn_mcp.database_query", "--http", "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open("127.0.0.1", port), timeout=30)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def listeners(platform: Any, mcp_http: int) -> dict[str, Listener]:
    settings: Settings = platform.settings
    ingest = _instance(settings, "INGEST-SERVICE")
    scheduler = _instance(settings, "SCHEDULER")
    poller = _instance(settings, "EVENT-SOURCE-POLLER")
    found = [
        Listener("gateway", settings.gateway_host, settings.gateway_port, "/api/payments/authorize", {}),
        Listener(
            "function host",
            ingest.host,
            ingest.port,
            "/2015-03-31/functions/AuthorizeFunction/invocations",
            {INVOKE_TOKEN_HEADER: settings.invoke_token},
        ),
        Listener(
            "registry",
            settings.registry_host,
            settings.registry_port,
            "/eureka/apps/HOSTILE-TEST",
            _basic(settings),
        ),
        Listener("scheduler", scheduler.host, scheduler.port, "/health", {}),
        Listener("event-source poller", poller.host, poller.port, "/health", {}),
        Listener("MCP", "127.0.0.1", mcp_http, "/mcp", {"Accept": "application/json, text/event-stream"}),
    ]
    return {listener.name: listener for listener in found}


NAMES = ["gateway", "function host", "registry", "scheduler", "event-source poller", "MCP"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("GET  /health HTTP/1.1", "two spaces before the target"),
        ("GET /health  HTTP/1.1", "two spaces before the version"),
        ("GET /health HTTP/2.0", "not HTTP/1.x"),
        ("GET /health", "no version (HTTP/0.9)"),
        ("GET /he\x7fa HTTP/1.1", "a control character in the target"),
    ],
)
def test_a_request_line_that_is_not_http_1x_is_400(
    listeners: dict[str, Listener], name: str, line: str, why: str
) -> None:
    listener = listeners[name]
    answer = listener.send(f"{line}\r\nHost: x\r\n\r\n".encode("latin-1"))
    assert answer.status == 400, (why, str(answer))


@pytest.mark.parametrize("name", NAMES)
def test_a_7_mib_header_is_431(listeners: dict[str, Listener], name: str) -> None:
    listener = listeners[name]
    answer = listener.send(request("GET", "/health", listener.host, {"X-Big": "a" * 7 * 1024 * 1024}))
    assert answer.status == 431, str(answer)


@pytest.mark.parametrize("name", NAMES)
def test_a_20_mb_chunked_body_is_413_and_answered(listeners: dict[str, Listener], name: str) -> None:
    listener = listeners[name]
    answer = chunked_upload(listener.host, listener.port, listener.post_path, 20 * 1024 * 1024)
    assert answer.status == 413, str(answer)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "header",
    [
        "Content-Length: abc",
        "Content-Length: 5\r\nContent-Length: 6",
        "Transfer-Encoding: gzip",
        "X-Nul: a\x00b",
    ],
)
def test_malformed_framing_headers_are_400(listeners: dict[str, Listener], name: str, header: str) -> None:
    listener = listeners[name]
    answer = listener.send(
        f"POST {listener.post_path} HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode("latin-1")
    )
    assert answer.status == 400, str(answer)


def test_a_stalled_body_is_408_at_every_listener(listeners: dict[str, Listener]) -> None:
    """All at once: each waits for the listener's request timeout (PAYFN_HTTP_REQUEST_TIMEOUT)."""
    with ThreadPoolExecutor(len(listeners)) as pool:
        answers = dict(
            zip(
                listeners,
                pool.map(lambda item: stalled_body(item.host, item.port, item.post_path), listeners.values()),
                strict=True,
            )
        )
    assert {name: answer.status for name, answer in answers.items()} == dict.fromkeys(listeners, 408), answers


@pytest.mark.parametrize("name", NAMES)
def test_odd_bytes_in_the_target_and_headers_are_never_a_5xx(
    listeners: dict[str, Listener], name: str
) -> None:
    listener = listeners[name]
    for target in ("/%FF%FE", "/%00", "/\u00e9t\u00e9".encode().decode("latin-1"), "/a?b=%C2%B2&c=\u202e"):
        raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nX-Name: \u00e9\u202e\r\nConnection: close\r\n\r\n"
        answer = listener.send(raw.encode("latin-1", "replace"))
        assert 400 <= answer.status < 500, (target, str(answer))


# --- JSON bodies ---------------------------------------------------------------------------------------


def test_deep_json_is_400_malformed_json_through_the_gateway(platform: Any) -> None:
    for levels in (2000, 5000):
        reply = call(platform.settings.gateway_url, "POST", "/api/payments/authorize", raw=deep_json(levels))
        assert reply.status == 400 and reply.json()["code"] == "MALFORMED_JSON", reply.body[:200]


def test_deep_json_nested_in_a_field_is_400(platform: Any) -> None:
    body = b'{"merchantId":"M","amount":' + deep_json(3000) + b',"currency":"USD","idempotencyKey":"k"}'
    reply = call(platform.settings.gateway_url, "POST", "/api/payments/authorize", raw=body)
    assert reply.status == 400 and reply.json()["code"] == "MALFORMED_JSON", reply.body[:200]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"merchantId":"M\\u202eX","amount":5,"currency":"USD","idempotencyKey":"k"}', "VALIDATION_FAILED"),
        (b'{"merchantId":"M","amount":5,"currency":"USD","idempotencyKey":"\\ud800"}', "VALIDATION_FAILED"),
        (b'{"merchantId":"M","amount":5,"currency":"USD","idempotencyKey":"k\xff"}', "MALFORMED_JSON"),
        (
            b'{"merchantId":"\xef\xbc\xad","amount":5,"currency":"USD","idempotencyKey":"k"}',
            "VALIDATION_FAILED",
        ),
        (
            b'{"merchantId":"M","amount":5,"currency":"\xef\xbc\xb5SD","idempotencyKey":"k"}',
            "VALIDATION_FAILED",
        ),
        (b'{"merchantId":"M","amount":1e999,"currency":"USD","idempotencyKey":"k"}', "VALIDATION_FAILED"),
    ],
)
def test_odd_unicode_and_numbers_in_an_authorize_are_400(platform: Any, body: bytes, code: str) -> None:
    reply = call(platform.settings.gateway_url, "POST", "/api/payments/authorize", raw=body)
    assert reply.status == 400 and reply.json()["code"] == code, reply.body[:300]


def test_deep_json_is_refused_by_the_invoke_api_and_the_registry(listeners: dict[str, Listener]) -> None:
    host = listeners["function host"].post(deep_json(5000))
    assert host.status == 400 and b"Could not parse request body into json" in host.body, str(host)
    registry = listeners["registry"].post(b'{"instance":' + deep_json(5000) + b"}")
    assert registry.status == 400, str(registry)
    mcp = listeners["MCP"].post(deep_json(5000))
    assert 400 <= mcp.status < 500, str(mcp)


@pytest.mark.parametrize(
    "filter_text", ["over \u00b2", "last \u00b2 hours", "under \u00b9\u00b2", "over \u0663", "last \uff11h"]
)
def test_unicode_digits_in_a_monitoring_filter_are_400(platform: Any, filter_text: str) -> None:
    reply = call(
        platform.settings.gateway_url, "GET", f"/api/monitoring/database/payments?filter={quote(filter_text)}"
    )
    assert reply.status == 400 and reply.json()["code"] == "VALIDATION_FAILED", reply.body[:300]


@pytest.mark.parametrize(
    "query", ["statistics?timeRange=%C2%B2h", "outbox?maxAgeMinutes=%C2%B2", "payments?limit=%D9%A3"]
)
def test_unicode_digits_in_other_monitoring_parameters_are_400(platform: Any, query: str) -> None:
    reply = call(platform.settings.gateway_url, "GET", f"/api/monitoring/database/{query}")
    assert reply.status == 400 and reply.json()["code"] == "VALIDATION_FAILED", reply.body[:300]


# --- the registry's documents ---------------------------------------------------------------------------


def _instance_document(**fields: Any) -> bytes:
    document = {
        "hostName": "127.0.0.1",
        "port": {"$": 9, "@enabled": "true"},
        "instanceId": "hostile-1",
        **fields,
    }
    return json.dumps({"instance": document}).encode()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (_instance_document(leaseInfo="forever"), 400, b"leaseInfo"),
        (_instance_document(countryId="abc"), 400, b"countryId"),
        (_instance_document(instanceId="i" * 2048), 400, b"256"),
        (_instance_document(metadata={"k": "v\x07"}), 400, b"control character"),
        (_instance_document(metadata={"big": "x" * 400 * 1024}), 413, b"65536"),
        (_instance_document(metadata={"bad key": "v"}), 400, b"XML name"),
        (_instance_document(port={"$": "x"}), 400, b"port"),
    ],
)
def test_registry_refuses_documents_it_could_not_list(
    listeners: dict[str, Listener], body: bytes, status: int, says: bytes
) -> None:
    answer = listeners["registry"].post(body)
    assert answer.status == status and says in answer.body, str(answer)


def test_registry_refuses_deep_xml(listeners: dict[str, Listener]) -> None:
    body = b"<instance>" + b"<a>" * 2000 + b"</a>" * 2000 + b"</instance>"
    answer = listeners["registry"].post(body, content_type="application/xml")
    assert answer.status == 400, str(answer)


def test_the_listing_still_parses_after_every_refusal(platform: Any) -> None:
    apps = RegistryClient(platform.settings.registry_url, timeout=5).apps()
    assert "HOSTILE-TEST" not in apps and "INGEST-SERVICE" in apps
    xml = exchange(
        platform.settings.registry_host,
        platform.settings.registry_port,
        request("GET", "/eureka/apps", "x", {"Accept": "application/xml"}),
    )
    assert xml.status == 200 and xml.body.startswith(b"<?xml")


def test_a_function_host_refuses_an_invocation_without_the_stack_token(
    listeners: dict[str, Listener],
) -> None:
    host = listeners["function host"]
    for headers in ({}, {INVOKE_TOKEN_HEADER: "guess"}):
        answer = host.send(request("POST", host.post_path, host.host, headers, b"{}"))
        assert answer.status == 403 and INVOKE_TOKEN_HEADER.encode() in answer.body, str(answer)


def test_the_token_is_the_stacks(platform: Any) -> None:
    assert platform.settings.invoke_token and platform.settings.invoke_token == load_settings().invoke_token
