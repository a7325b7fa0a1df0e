"""Prometheus metrics of a function host.

Three sources end up in one ``/metrics`` page: the host's own series (Lambda's
CloudWatch metrics as ``payfn_lambda_*`` and the Spring server timer
``http_server_requests_seconds`` for API-event invocations); series written inside
execution environments, summed through prometheus_client's multiprocess mode; and the
scrape-time collectors declared in the template (``infra.runtime.collectors``).

Labels are bounded by the template, and label children are resolved once and cached
so recording an invocation stays cheap on the hot path.

Details: docs/RUNTIME.md#infraruntimemetrics.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from infra.net.http_metrics import http_server_requests, outcome_of
from infra.stack.process import pid_alive

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 900.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNKNOWN = "UNKNOWN"
MULTIPROCESS_DIR_PREFIX = "payfn-metrics-"


def new_multiprocess_dir(root: Path | None = None) -> Path:
    """A new private folder (``payfn-metrics-<host pid>-…``) for the environments' series.

    A host removes its folder when it stops; one killed outright cannot, so the folders
    of hosts that are no longer alive are removed here, when the next host starts.
    """
    base = root or Path(tempfile.gettempdir())
    for stale in base.glob(f"{MULTIPROCESS_DIR_PREFIX}*-*"):
        pid = stale.name.removeprefix(MULTIPROCESS_DIR_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                shutil.rmtree(stale)
    return Path(tempfile.mkdtemp(prefix=f"{MULTIPROCESS_DIR_PREFIX}{os.getpid()}-", dir=base))


class RuntimeMetrics:
    """The host's registry and metric families.

    ``multiprocess_dir`` is the folder the host's execution environments write their
    own series to (``PROMETHEUS_MULTIPROC_DIR`` in their environment); None means the
    environments' series are not collected.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess_dir = multiprocess_dir
        labels = ("function", "service")
        self.invocations = Counter("payfn_lambda_invocations", "Invocations (Lambda's Invocations)", labels,
                                   registry=self.registry)
        self.errors = Counter("payfn_lambda_errors", "Invocations that ended in a function error", labels,
                              registry=self.registry)
        self.throttles = Counter("payfn_lambda_throttles", "Invocation requests throttled", labels,
                                 registry=self.registry)
        self.timeouts = Counter("payfn_lambda_timeouts", "Invocations killed at their Timeout", labels,
                                registry=self.registry)
        self.cold_starts = Counter("payfn_lambda_cold_starts", "Invocations that started a new environment",
                                   labels, registry=self.registry)
        self.duration = Histogram("payfn_lambda_duration_seconds", "Invocation duration (Lambda's Duration)",
                                  labels, buckets=DURATION_BUCKETS, registry=self.registry)
        self.init_duration = Histogram("payfn_lambda_init_duration_seconds", "Init phase of cold starts",
                                       labels, buckets=DURATION_BUCKETS, registry=self.registry)
        self.concurrent = Gauge("payfn_lambda_concurrent_executions", "Invocations running now", labels,
                                registry=self.registry)
        self.environments = Gauge("payfn_lambda_environments", "Execution environments alive (busy + idle)",
                                  labels, registry=self.registry)
        self.http_requests = http_server_requests(
            self.registry,
            "API-event invocations as the client sees them (Micrometer's server timer): template route, "
            "method, the proxy result's status (502/504 for function errors/timeouts, 429 for throttles)")
        if multiprocess_dir is not None:
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))

    def for_function(self, function: str, service: str | None) -> FunctionMetrics:
        return FunctionMetrics(self, function, service or "")

    def http_for(self, application: str, uris: Iterable[str]) -> HttpRouteMetrics:
        return HttpRouteMetrics(self.http_requests, application, uris)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class FunctionMetrics:
    """The label children of one function, resolved once."""

    def __init__(self, metrics: RuntimeMetrics, function: str, service: str) -> None:
        self.invocations = metrics.invocations.labels(function, service)
        self.errors = metrics.errors.labels(function, service)
        self.throttles = metrics.throttles.labels(function, service)
        self.timeouts = metrics.timeouts.labels(function, service)
        self.cold_starts = metrics.cold_starts.labels(function, service)
        self.duration = metrics.duration.labels(function, service)
        self.init_duration = metrics.init_duration.labels(function, service)
        self.concurrent = metrics.concurrent.labels(function, service)
        self.environments = metrics.environments.labels(function, service)


class HttpRouteMetrics:
    """``http_server_requests_seconds`` of one function's API routes.

    ``uris`` are the function's template paths (API Gateway's ``resource``, e.g.
    ``/payments/capture/{paymentId}``): a route the template does not declare is
    recorded as ``UNKNOWN`` so that no caller can create series at will.
    """

    def __init__(self, histogram: Histogram, application: str, uris: Iterable[str]) -> None:
        self._histogram = histogram
        self._application = application
        self._uris = frozenset(uris)
        self._children: dict[tuple[str, str, int], Histogram] = {}

    def observe(self, method: str, uri: str, status: int, seconds: float) -> None:
        # Normalised before the cache lookup, so that unknown routes cannot grow the cache either.
        key = (method if method in HTTP_METHODS else UNKNOWN, uri if uri in self._uris else UNKNOWN,
               status if 100 <= status <= 599 else 0)
        child = self._children.get(key)
        if child is None:
            method, route, status = key
            status_label, outcome = (str(status), outcome_of(status)) if status else (UNKNOWN, UNKNOWN)
            child = self._histogram.labels(self._application, route, method, status_label, outcome)
            self._children[key] = child
        child.observe(seconds)
