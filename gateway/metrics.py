"""The gateway's Prometheus metrics, named as Spring Cloud Gateway and Spring Boot name them.

``spring_cloud_gateway_requests_seconds`` (per route, with outcome and status tags)
and ``http_server_requests_seconds{application="gateway"}`` keep dashboards written
for the seed's Spring gateway working. Label children are cached per label tuple,
because looking them up through ``labels()`` on every request is the costly part
of recording at thousands of requests per second.
"""

from __future__ import annotations

from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from infra.net.http_metrics import http_server_requests, outcome_of

#: Buckets of the per-route timer (the server timer has ``infra.net.http_metrics``'s).
ROUTE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_NAMES = {status.value: status.name for status in HTTPStatus}

CONTENT_TYPE = CONTENT_TYPE_LATEST


def series(status: int) -> str:
    """Spring Cloud Gateway's ``outcome`` tag: the name of the HTTP status series."""
    return {1: "INFORMATIONAL", 2: "SUCCESSFUL", 3: "REDIRECTION", 4: "CLIENT_ERROR"}.get(
        status // 100, "SERVER_ERROR")


class GatewayMetrics:
    """One registry per gateway (tests run several in one process)."""

    def __init__(self, application: str = "gateway") -> None:
        self.application = application
        self.registry = CollectorRegistry()
        self._route = Histogram(
            "spring_cloud_gateway_requests_seconds", "Requests routed by the gateway",
            ["routeId", "routeUri", "outcome", "status", "httpStatusCodeName", "httpMethod"],
            registry=self.registry, buckets=ROUTE_BUCKETS,
        )
        self._server = http_server_requests(self.registry)
        self._total = Counter("gateway_requests", "Requests by route and status",
                              ["routeId", "status"], registry=self.registry)
        self.retries = Counter("gateway_upstream_retries", "Requests re-sent (route Retry policy) after "
                               "a connect failure or a connection lost before the answer",
                               ["service", "kind"], registry=self.registry)
        self.upstream_errors = Counter("gateway_upstream_errors", "Upstream failures by kind",
                                       ["service", "kind"], registry=self.registry)
        self._children: dict[tuple[str, ...], tuple[object, object, object]] = {}

    def observe(self, route_id: str, route_uri: str, uri: str, method: str, status: int,
                seconds: float) -> None:
        key = (route_id, route_uri, uri, method, str(status))
        children = self._children.get(key)
        if children is None:
            code = str(status)
            name = _NAMES.get(status, "UNKNOWN")
            result = outcome_of(status)
            children = (
                self._route.labels(route_id, route_uri, series(status), code, name, method)
                if route_id else None,
                self._server.labels(self.application, uri, method, code, result),
                self._total.labels(route_id or "none", code),
            )
            self._children[key] = children
        route, server, total = children
        if route is not None:
            route.observe(seconds)  # type: ignore[attr-defined]
        server.observe(seconds)  # type: ignore[attr-defined]
        total.inc()  # type: ignore[attr-defined]

    def render(self) -> bytes:
        return generate_latest(self.registry)
