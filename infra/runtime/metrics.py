"""Prometheus metrics of a function host, Lambda's CloudWatch metrics under Prometheus names.

Labels are only ``function`` and ``service`` (bounded by the template), and each
function's label children are resolved once, so recording an invocation costs a few
attribute lookups rather than a label-dictionary lookup per metric per request.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 900.0)


class RuntimeMetrics:
    """The host's registry and metric families."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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

    def for_function(self, function: str, service: str | None) -> FunctionMetrics:
        return FunctionMetrics(self, function, service or "")

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
