"""Gateway routing: Spring routes (Path patterns, StripPrefix) and the template's API events."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.api_map import ApiMap, MethodNotAllowed, cors_policy
from gateway.spring_routes import (
    CONNECT_ONLY,
    ROUTES_PATH,
    Failure,
    RetryPolicy,
    RoutingConfigError,
    load_routes,
    parse_retry,
    parse_routes,
    spring_path_regex,
)
from infra.sam.template import load_template
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
    assert set(routes) == {"payments-authorize", "payments", "monitoring", "circuit-breaker"}
    assert [r.id for r in load_routes(ROUTES_PATH)][:2] == ["payments-authorize", "payments"]
    assert routes["payments-authorize"].matches("POST", "/api/payments/authorize")
    assert not routes["payments-authorize"].matches("GET", "/api/payments/authorize")
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


def test_project_retry_policies_retry_posts_only_where_idempotent() -> None:
    """Authorize dedupes on its idempotency key; capture/refund would answer 409 if re-run."""
    routes = {route.id: route for route in load_routes(ROUTES_PATH)}
    authorize = routes["payments-authorize"].retry
    assert authorize.retries_after(Failure.CONNECTION_LOST, "POST")
    for route_id in ("payments", "monitoring", "circuit-breaker"):
        policy = routes[route_id].retry
        assert policy.retries_after(Failure.CONNECTION_LOST, "GET"), route_id
        assert policy.retries_after(Failure.CONNECTION_LOST, "HEAD"), route_id
        assert not policy.retries_after(Failure.CONNECTION_LOST, "POST"), route_id
        assert policy.retries_after(Failure.CONNECT, "POST"), route_id
    assert {r.retry.retries for r in routes.values()} == {2}


def test_retry_filter_arguments() -> None:
    policy = parse_retry({"retries": 4, "methods": ["get", "POST"], "series": [],
                          "exceptions": "reactor.netty.http.client.PrematureCloseException",
                          "backoff": {"firstBackoff": "10ms", "maxBackoff": "1s", "factor": 3}}, "r")
    assert policy == RetryPolicy(4, frozenset({Failure.CONNECTION_LOST}), frozenset({"GET", "POST"}),
                                 0.01, 1.0, 3.0)
    assert not policy.retries_after(Failure.CONNECT, "GET")
    assert [round(policy.backoff(n, 0.0), 3) for n in (1, 2, 3, 4, 5)] == [0.01, 0.03, 0.09, 0.27, 0.81]
    assert round(policy.backoff(6, 0.0), 3) == 1.0
    chained = parse_retry({"backoff": {"firstBackoff": 5, "factor": 2, "basedOnPreviousValue": True}}, "r")
    assert chained.backoff(1, 0.0) == 0.005 and chained.backoff(2, 0.005) == 0.01
    default = parse_retry({}, "r")
    assert default.failures == frozenset(Failure) and default.methods == {"GET"} and default.retries == 3
    assert default.backoff(1, 0.0) == 0.0
    assert parse_retry({"exceptions": ["IOException"]}, "r").failures == frozenset(Failure)
    assert CONNECT_ONLY.retries_after(Failure.CONNECT, "POST")
    assert not CONNECT_ONLY.retries_after(Failure.CONNECTION_LOST, "GET")


@pytest.mark.parametrize("args", [
    {"statuses": "BAD_GATEWAY"},
    {"series": "SERVER_ERROR"},
    {"exceptions": "org.springframework.cloud.gateway.support.TimeoutException"},
    {"retries": -1},
    {"backoff": {"firstBackoff": "soon"}},
    {"backoff": {"factor": 0.5}},
    {"retry": 3},
    "3",
])
def test_retry_filter_refuses_unsafe_or_unknown_settings(args: object) -> None:
    with pytest.raises(RoutingConfigError):
        parse_retry(args, "r")


def test_retry_filter_in_a_route() -> None:
    (route,) = parse_routes({"spring": {"cloud": {"gateway": {"routes": [{
        "id": "r", "uri": "lb://svc", "predicates": ["Path=/a/**"],
        "filters": ["StripPrefix=1", {"name": "Retry", "args": {"methods": "GET,POST"}}]}]}}}})
    assert route.retry.methods == {"GET", "POST"}
    (plain,) = parse_routes({"spring": {"cloud": {"gateway": {"routes": [{
        "id": "r", "uri": "lb://svc", "predicates": ["Path=/a/**"]}]}}}})
    assert plain.retry is CONNECT_ONLY
    with pytest.raises(RoutingConfigError):
        parse_routes({"spring": {"cloud": {"gateway": {"routes": [{
            "id": "r", "uri": "lb://svc", "predicates": ["Path=/a/**"],
            "filters": [{"name": "CircuitBreaker", "args": {}}]}]}}}})


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
