"""Spring Boot's HTTP server timer, ``http_server_requests_seconds``, made in one place.

The function host, the gateway and the registry each record every answer they
serve in Micrometer's ``http.server.requests`` timer under its Prometheus name, so
the seed's dashboards, alert rules and the breaker monitor's queries read all three
alike. One label set (``application, uri, method, status, outcome``) and one set of
buckets: fine where payment APIs live (1–250 ms), so a p95 read with
``histogram_quantile`` is within a bucket of the truth, coarse above.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

HTTP_SERVER_REQUESTS = "http_server_requests_seconds"
HTTP_LABELS = ("application", "uri", "method", "status", "outcome")
HTTP_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)


def outcome_of(status: int) -> str:
    """Micrometer's ``outcome`` tag for an HTTP status."""
    if status < 200:
        return "INFORMATIONAL"
    if status < 300:
        return "SUCCESS"
    if status < 400:
        return "REDIRECTION"
    if status < 500:
        return "CLIENT_ERROR"
    return "SERVER_ERROR"


def http_server_requests(registry: CollectorRegistry,
                         documentation: str = "HTTP requests served") -> Histogram:
    """The server timer in ``registry``; its children are labelled in ``HTTP_LABELS`` order."""
    return Histogram(HTTP_SERVER_REQUESTS, documentation, HTTP_LABELS, buckets=HTTP_BUCKETS,
                     registry=registry)
