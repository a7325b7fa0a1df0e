"""Gateway routing: Spring routes (Path patterns, StripPrefix) and the template's API events."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.routing import (
    ROUTES_PATH,
    ApiMap,
    MethodNotAllowed,
    RoutingConfigError,
    cors_policy,
    load_routes,
    parse_routes,
    spring_path_regex,
)
from infra.template import load_template
from tests.gateway_support import write_template


def test_spring_path_patterns() -> None:
    pattern = spring_path_regex("/api/payments/**")
    for path in ("/api/payments", "/api/payments/", "/api/payments/authorize", "/api/payments/a/b"):
        assert pattern.match(path), path
    for path in ("/api/paymentsx", "/api/payment/x", "/api"):
        assert not pattern.match(path), path
    assert spring_path_regex("/a/{id}/b").match("/a/42/b")
    assert not spring_path_regex("/a/{id}/b").match("/a/4/2/b")
    assert spring_path_regex("/files/*.csv").match("/files/x.csv")
    with pytest.raises(RoutingConfigError):
        spring_path_regex("/a/**/b")


def test_project_routes_and_strip_prefix() -> None:
    routes = {route.id: route for route in load_routes(ROUTES_PATH)}
    assert set(routes) == {"payments", "monitoring", "circuit-breaker"}
    payments = routes["payments"]
    assert payments.service == "INGEST-SERVICE"
    assert payments.matches("POST", "/api/payments/authorize")
    assert payments.rewrite("/api/payments/authorize") == "/payments/authorize"
    assert payments.rewrite("/api/payments/capture/p-1") == "/payments/capture/p-1"
    assert routes["circuit-breaker"].service == "INGEST-SERVICE"
    assert routes["circuit-breaker"].rewrite("/api/circuit-breaker/status") == "/circuit-breaker/status"
    assert routes["monitoring"].service == "MONITORING-SERVICE"


def test_route_filters_and_predicates() -> None:
    (route,) = parse_routes({"spring": {"cloud": {"gateway": {"routes": [{
        "id": "r", "uri": "lb://svc", "predicates": ["Path=/a/**,/b/**", "Method=GET"],
        "filters": ["StripPrefix=2", "PrefixPath=/v2"]}]}}}})
    assert route.service == "SVC"
    assert route.matches("GET", "/b/x/y") and not route.matches("POST", "/a/x")
    assert route.rewrite("/a/x/y/z") == "/v2/y/z"
    assert route.rewrite("/a/x") == "/v2/"
    with pytest.raises(RoutingConfigError):
        parse_routes({"spring": {"cloud": {"gateway": {"routes": [
            {"id": "r", "uri": "lb://s", "predicates": ["Path=/a/**"], "filters": ["Retry=3"]}]}}}})
    with pytest.raises(RoutingConfigError):
        parse_routes({"spring": {"cloud": {"gateway": {"routes": [
            {"id": "r", "uri": "http://x", "predicates": ["Path=/a/**"]}]}}}})


@pytest.fixture(scope="module")
def api_map(tmp_path_factory: pytest.TempPathFactory) -> ApiMap:
    return ApiMap.from_template(load_template(write_template(tmp_path_factory.mktemp("tpl"))))


def test_api_matching_prefers_the_most_specific(api_map: ApiMap) -> None:
    matched = api_map.match("INGEST-SERVICE", "POST", "/payments/authorize")
    assert matched is not None and matched[0].function == "AuthorizeFunction" and matched[1] == {}
    matched = api_map.match("INGEST-SERVICE", "GET", "/payments/p%2D1")
    assert matched is not None
    assert (matched[0].function, matched[1]) == ("GetPaymentFunction", {"paymentId": "p-1"})
    assert matched[0].resource == "/payments/{paymentId}" and matched[0].event_type == "Api"
    matched = api_map.match("INGEST-SERVICE", "DELETE", "/payments/files/a/b.txt")
    assert matched is not None
    assert (matched[0].function, matched[1]) == ("FilesFunction", {"proxy": "a/b.txt"})
    with pytest.raises(MethodNotAllowed):
        api_map.match("INGEST-SERVICE", "DELETE", "/payments/authorize")
    assert api_map.match("INGEST-SERVICE", "GET", "/elsewhere") is None
    assert api_map.match("NO-SERVICE", "GET", "/payments/x") is None
    monitoring = api_map.match("MONITORING-SERVICE", "GET", "/monitoring/health")
    assert monitoring is not None and monitoring[0].event_type == "HttpApi"
    assert monitoring[0].api.stage == "$default" and monitoring[0].timeout == 2.0


def test_api_definition_from_template(api_map: ApiMap) -> None:
    matched = api_map.match("INGEST-SERVICE", "POST", "/payments/authorize")
    assert matched is not None
    api = matched[0].api
    assert api.logical_id == "PayfnApi" and api.stage == "v1"
    assert api.cors is not None and api.cors.allow_methods == "GET,POST,OPTIONS"
    assert api.cors.max_age == "600"


def test_cors_forms() -> None:
    assert cors_policy("Api", {}) is None
    assert cors_policy("Api", {"Cors": "'https://a.example'"}).allow_origin == "https://a.example"  # type: ignore[union-attr]
    http = cors_policy("HttpApi", {"CorsConfiguration": {"AllowOrigins": ["https://a", "https://b"],
                                                         "AllowMethods": ["GET"], "MaxAge": 60}})
    assert http is not None
    assert http.origin_for("https://b") == "https://b" and http.origin_for("https://evil") == "https://a"
    assert dict(http.preflight_headers("https://a"))["Access-Control-Max-Age"] == "60"


def test_project_template_builds_an_api_map() -> None:
    api_map = ApiMap.from_template(load_template())
    assert "INGEST-SERVICE" in api_map.services()


def test_function_without_a_service_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n"
                    "      Handler: a.b\n      Events:\n        E:\n          Type: Api\n"
                    "          Properties: {Path: /x, Method: GET}\n")
    assert ApiMap.from_template(load_template(path)).services() == []
