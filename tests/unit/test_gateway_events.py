"""Proxy events as AWS builds them (checked against ``sam local generate-event``) and result mapping."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.api_map import ApiMap, ApiRoute
from gateway.events import (
    ProxyResultError,
    build_event,
    is_binary,
    map_v1_result,
    map_v2_result,
    parse_query,
)
from infra.net.messages import Request
from infra.sam.template import load_template
from tests.gateway_support import write_template

SAM = Path(sys.executable).parent / "sam"


def sam_event(kind: str) -> dict[str, Any]:
    if not SAM.exists() and shutil.which("sam") is None:
        pytest.skip("sam CLI not installed")
    command = [str(SAM) if SAM.exists() else "sam", "local", "generate-event", "apigateway", kind]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120,
                            env={**os.environ, "SAM_CLI_TELEMETRY": "0"}).stdout
    return json.loads(output[output.index("{"):])


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> ApiMap:
    return ApiMap.from_template(load_template(write_template(tmp_path_factory.mktemp("tpl"))))


def route(routes: ApiMap, service: str, method: str, path: str) -> tuple[ApiRoute, dict[str, str]]:
    matched = routes.match(service, method, path)
    assert matched is not None
    return matched


def request(method: str = "POST", path: str = "/api/payments/authorize", query: str = "a=1&a=2&b=x%20y",
            body: bytes = b'{"amount": 100}', content_type: str = "application/json") -> Request:
    return Request(method, path, query, [
        ("Host", "localhost:8080"), ("User-Agent", "curl/8"), ("Content-Type", content_type),
        ("X-Multi", "one"), ("X-Multi", "two"), ("Cookie", "c1=v1; c2=v2"),
    ], body, "127.0.0.1")


def test_v1_event_has_the_shape_of_sams_sample(routes: ApiMap) -> None:
    sample = sam_event("aws-proxy")
    api_route, params = route(routes, "INGEST-SERVICE", "POST", "/payments/authorize")
    event = build_event(request(), api_route, "/payments/authorize", params, "rid", 1_700_000_000.5,
                        "localhost:8080")
    assert set(event) == set(sample)
    assert set(sample["requestContext"]) <= set(event["requestContext"])
    assert set(sample["requestContext"]["identity"]) <= set(event["requestContext"]["identity"])
    for key in ("resourceId", "resourcePath", "httpMethod", "extendedRequestId", "requestTime", "path",
                "accountId", "protocol", "stage", "domainPrefix", "requestTimeEpoch", "requestId",
                "identity", "domainName", "apiId"):
        assert key in event["requestContext"], key
    assert event["path"] == "/payments/authorize" and event["resource"] == "/payments/authorize"
    assert event["httpMethod"] == "POST" and event["pathParameters"] is None
    assert event["headers"]["X-Multi"] == "two" and event["multiValueHeaders"]["X-Multi"] == ["one", "two"]
    assert event["queryStringParameters"] == {"a": "2", "b": "x y"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x y"]}
    assert event["body"] == '{"amount": 100}' and event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["path"] == "/v1/payments/authorize" and context["stage"] == "v1"
    assert context["requestTimeEpoch"] == 1_700_000_000_500 and context["requestId"] == "rid"
    assert context["requestTime"] == "14/Nov/2023:22:13:20 +0000"
    assert context["identity"]["sourceIp"] == "127.0.0.1" and context["identity"]["userAgent"] == "curl/8"
    assert context["resourcePath"] == "/payments/authorize" and context["protocol"] == "HTTP/1.1"
    assert len(context["apiId"]) == 10 and context["domainName"] == "localhost:8080"
    for key, value in sample.items():
        if value is not None and event[key] is not None:
            assert type(event[key]) is type(value), key


def test_v1_path_parameters_and_empty_maps_are_null(routes: ApiMap) -> None:
    api_route, params = route(routes, "INGEST-SERVICE", "GET", "/payments/p-1")
    bare = Request("GET", "/api/payments/p-1", "", [], b"", "10.0.0.1")
    event = build_event(bare, api_route, "/payments/p-1", params, "rid", 0.0, "h")
    assert event["pathParameters"] == {"paymentId": "p-1"} and event["resource"] == "/payments/{paymentId}"
    for key in ("headers", "multiValueHeaders", "queryStringParameters", "multiValueQueryStringParameters",
                "stageVariables", "body"):
        assert event[key] is None, key


def test_v2_event_has_the_shape_of_sams_sample(routes: ApiMap) -> None:
    sample = sam_event("http-api-proxy")
    api_route, params = route(routes, "MONITORING-SERVICE", "GET", "/monitoring/health")
    event = build_event(request("GET", "/api/monitoring/health"), api_route, "/monitoring/health", params,
                        "rid", 1_700_000_000.0, "localhost:8080")
    assert set(sample) - {"stageVariables"} == set(event)
    assert set(sample["requestContext"]) - {"authentication", "authorizer"} == set(event["requestContext"])
    assert set(sample["requestContext"]["http"]) == set(event["requestContext"]["http"])
    assert event["version"] == "2.0" and event["routeKey"] == "GET /monitoring/{check}"
    assert event["rawPath"] == "/monitoring/health" and event["rawQueryString"] == "a=1&a=2&b=x%20y"
    assert event["cookies"] == ["c1=v1", "c2=v2"] and "cookie" not in event["headers"]
    assert event["headers"]["x-multi"] == "one,two" and event["headers"]["user-agent"] == "curl/8"
    assert event["queryStringParameters"] == {"a": "1,2", "b": "x y"}
    assert event["pathParameters"] == {"check": "health"}
    assert event["requestContext"]["http"] == {"method": "GET", "path": "/monitoring/health",
                                               "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                                               "userAgent": "curl/8"}
    assert event["requestContext"]["stage"] == "$default" and event["requestContext"]["timeEpoch"] == 1.7e12


def test_binary_bodies_are_base64(routes: ApiMap) -> None:
    api_route, params = route(routes, "INGEST-SERVICE", "POST", "/payments/authorize")
    raw = bytes(range(256))
    event = build_event(request(body=raw, content_type="application/octet-stream"), api_route,
                        "/payments/authorize", params, "rid", 0.0, "h")
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == raw
    event = build_event(request(body=b"\xff\xfe", content_type="text/plain"), api_route,
                        "/payments/authorize", params, "rid", 0.0, "h")
    assert event["isBase64Encoded"] is True
    assert not is_binary("application/json; charset=utf-8") and not is_binary("application/problem+json")
    assert is_binary("image/png") and is_binary("application/json", ("application~1json",))
    assert parse_query("a&b=&c=1+2") == [("a", ""), ("b", ""), ("c", "1 2")]


def test_v1_result_mapping() -> None:
    result = map_v1_result(json.dumps({
        "statusCode": 201, "headers": {"Content-Type": "application/json", "X-One": "1"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]}, "body": '{"ok": true}'}).encode())
    assert result.status == 201 and result.body == b'{"ok": true}'
    assert ("Set-Cookie", "a=1") in result.headers and ("Set-Cookie", "b=2") in result.headers
    assert ("X-One", "1") in result.headers
    binary = map_v1_result(b'{"statusCode": 200, "body": "AAEC", "isBase64Encoded": true}')
    assert binary.body == b"\x00\x01\x02"
    assert map_v1_result(b'{"statusCode": 204}').body == b""
    for bad in (b'"text"', b'{"body": "x"}', b'{"statusCode": "abc"}', b"not json",
                b'{"statusCode": 200, "body": {"not": "a string"}}', b'{"statusCode": 700}'):
        with pytest.raises(ProxyResultError):
            map_v1_result(bad)


def test_v2_result_mapping() -> None:
    plain = map_v2_result(b'{"hello": "world"}')
    assert plain.status == 200 and plain.body == b'{"hello": "world"}'
    assert ("Content-Type", "application/json") in plain.headers
    full = map_v2_result(b'{"statusCode": 202, "cookies": ["a=1"], "body": "ok", '
                         b'"headers": {"content-type": "text/plain"}}')
    assert full.status == 202 and ("Set-Cookie", "a=1") in full.headers and full.body == b"ok"
    assert ("Content-Type", "application/json") not in full.headers
