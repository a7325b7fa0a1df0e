"""Circuit-breaker reports: status, Kafka health, diagnosis, failure pattern over time.

The breaker's state lives in Redis (:mod:`payfn_shared.platform.breaker`), so any process
reads the fleet-wide truth with one snapshot; Kafka's health is checked over the
plain Kafka protocol (metadata round trip), as any broker — local, Redpanda or
MSK — answers it; the history comes from Prometheus, because a snapshot only
knows the current window and the seed's question is "what happened in the last
hour". A diagnosis never fails as a whole: each source that cannot be read is
reported as a finding, since a broken dependency is exactly when it is asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from payfn_shared.monitoring.config import MonitoringConfig, load_monitoring_config
from payfn_shared.monitoring.database import utc_now
from payfn_shared.monitoring.filters import parse_time_range
from payfn_shared.monitoring.prometheus import PrometheusClient, PrometheusUnavailable
from payfn_shared.payments.publisher import BREAKER_NAME
from payfn_shared.payments.topics import ALL_TOPICS
from payfn_shared.platform.breaker import (
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    STORAGE_LOCAL_FALLBACK,
    get_breaker,
)
from payfn_shared.platform.config import Settings, load_settings
from payfn_shared.platform.errors import ApiError

SEVERITIES = ("ok", "warning", "critical")
MAX_ANALYSIS_WINDOW = timedelta(days=7)
STATE_ICONS = {CLOSED: "✅", HALF_OPEN: "🟡", OPEN: "🔴", FORCED_OPEN: "🔴", DISABLED: "⚪"}


def _worst(severities: list[str]) -> str:
    return max(severities, key=SEVERITIES.index, default="ok")


class BreakerMonitor:
    """The circuit-breaker side of MONITORING-SERVICE."""

    def __init__(
        self,
        settings: Settings | None = None,
        config: MonitoringConfig | None = None,
        outbox_status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """``outbox_status`` supplies the outbox report for :meth:`diagnose` (the database monitor's)."""
        self.settings = settings or load_settings()
        self.config = config or load_monitoring_config()
        self._outbox_status = outbox_status

    def status(self) -> dict[str, Any]:
        """``{"kafka-publisher": snapshot}``, as the ingest service's own status route answers."""
        snapshot = get_breaker(BREAKER_NAME).snapshot()
        rate = snapshot["failureRate"]
        shown = f"{rate:.1f}%" if rate >= 0 else "n/a (below minimum calls)"
        summary = (
            f"{STATE_ICONS.get(snapshot['state'], '')} {BREAKER_NAME} {snapshot['state']}: "
            f"failure rate {shown}, {snapshot['numberOfBufferedCalls']} buffered call(s), "
            f"{snapshot['numberOfNotPermittedCalls']} not permitted (state in {snapshot['storage']})"
        )
        return {"summary": summary.strip(), BREAKER_NAME: snapshot}

    def kafka_health(self) -> dict[str, Any]:
        """Broker reachability (metadata round trip), latency, and whether payfn's topics exist."""
        started = time.monotonic()
        bootstrap = self.settings.kafka_bootstrap
        timeout = self.config.kafka_timeout_ms
        try:
            admin = AdminClient({
                "bootstrap.servers": bootstrap,
                "client.id": "payfn-monitoring",
                "socket.timeout.ms": timeout,
            })
            metadata = admin.list_topics(timeout=timeout / 1000)
        except (KafkaException, ValueError) as exc:
            latency = round((time.monotonic() - started) * 1000, 1)
            return {
                "summary": f"🔴 Kafka DOWN at {bootstrap}: {type(exc).__name__}: {exc}",
                "status": "DOWN",
                "bootstrap": bootstrap,
                "reachable": False,
                "latencyMs": latency,
                "error": f"{type(exc).__name__}: {exc}",
            }
        latency = round((time.monotonic() - started) * 1000, 1)
        topics = set(metadata.topics)
        partitions = {name: len(metadata.topics[name].partitions) for name in ALL_TOPICS if name in topics}
        missing = [topic for topic in ALL_TOPICS if topic not in topics]
        status = "UP" if not missing else "DEGRADED"
        summary = f"{'✅' if status == 'UP' else '🟡'} Kafka {status} at {bootstrap} ({latency} ms)" + (
            f", missing topics: {', '.join(missing)}" if missing else f", {len(partitions)} payfn topics"
        )
        return {
            "summary": summary,
            "status": status,
            "bootstrap": bootstrap,
            "reachable": True,
            "latencyMs": latency,
            "topics": partitions,
            "missingTopics": missing,
        }

    def health(self) -> dict[str, Any]:
        """Breaker state + Kafka health: UP only when the breaker admits calls and Kafka answers."""
        snapshot = get_breaker(BREAKER_NAME).snapshot()
        kafka = self.kafka_health()
        if snapshot["state"] in (OPEN, FORCED_OPEN) or kafka["status"] == "DOWN":
            status = "DOWN"
        elif snapshot["state"] != CLOSED or kafka["status"] != "UP" or snapshot["storage"] != "redis":
            status = "DEGRADED"
        else:
            status = "UP"
        summary = f"{status}: breaker {snapshot['state']} ({snapshot['storage']}); {kafka['summary']}"
        return {"summary": summary, "status": status, "circuitBreaker": snapshot, "kafka": kafka}

    def diagnose(self) -> dict[str, Any]:
        """Findings with severities and what to do, from the breaker, Kafka and the outbox."""
        breaker = get_breaker(BREAKER_NAME)
        snapshot = breaker.snapshot()
        threshold = breaker.config.failure_rate_threshold
        slow_threshold = breaker.config.slow_call_rate_threshold
        findings: list[dict[str, str]] = []

        def finding(severity: str, message: str, action: str) -> None:
            findings.append({"severity": severity, "finding": message, "recommendation": action})

        state = snapshot["state"]
        if state in (OPEN, FORCED_OPEN):
            finding(
                "critical",
                f"breaker is {state}: publishing is refused, events wait in the outbox",
                "check Kafka (check_kafka_health); the breaker half-opens by itself after "
                f"{breaker.config.wait_duration_in_open_state_seconds:g} s; the relay publishes the backlog",
            )
        elif state == HALF_OPEN:
            finding(
                "warning",
                "breaker is HALF_OPEN: trial calls decide whether it closes",
                "watch the next calls; if Kafka is healthy it closes after the permitted trial calls",
            )
        elif state == DISABLED:
            finding(
                "warning",
                "breaker is DISABLED: failures are not counted, Kafka outages reach requests",
                "transition it back to CLOSED once the maintenance is over",
            )
        if snapshot["storage"] == STORAGE_LOCAL_FALLBACK:
            finding(
                "warning",
                "Redis is unreachable: each process runs its own local breaker",
                "restore Redis; states are not shared across function instances until then",
            )
        if snapshot["failureRate"] >= threshold / 2:
            finding(
                "warning",
                f"failure rate {snapshot['failureRate']:.1f}% (opens at {threshold:g}%)",
                "look at the publish errors in the outbox (check_outbox_status) and broker logs",
            )
        if snapshot["slowCallRate"] >= slow_threshold / 2:
            finding(
                "warning",
                f"slow-call rate {snapshot['slowCallRate']:.1f}% (opens at {slow_threshold:g}%)",
                "Kafka answers slowly: check broker load and network latency",
            )

        kafka = self.kafka_health()
        if kafka["status"] == "DOWN":
            finding(
                "critical",
                f"Kafka is unreachable at {kafka['bootstrap']}",
                "start or fix the broker; payments keep working, events wait in the outbox",
            )
        elif kafka["missingTopics"]:
            finding(
                "warning",
                f"topics missing: {', '.join(kafka['missingTopics'])}",
                "let the stack create them (payfn up) or create them with the configured partitions",
            )

        outbox: dict[str, Any] | None = None
        if self._outbox_status is not None:
            try:
                outbox = self._outbox_status()
            except ApiError as exc:
                finding(
                    "warning",
                    f"outbox could not be read: {exc.message}",
                    "check the database (the monitoring user is read-only)",
                )
            else:
                if outbox["stuckCount"]:
                    finding(
                        "critical" if state in (OPEN, FORCED_OPEN) else "warning",
                        f"{outbox['stuckCount']} outbox event(s) unpublished for more than "
                        f"{outbox['maxAgeMinutes']} min",
                        "check that the outbox relay runs and that Kafka accepts writes",
                    )

        severity = _worst([f["severity"] for f in findings])
        if not findings:
            summary = f"✅ {state} - healthy, failure rate {max(snapshot['failureRate'], 0):.1f}%, Kafka UP"
        else:
            summary = f"{severity.upper()}: " + "; ".join(f["finding"] for f in findings)
        return {
            "summary": summary,
            "severity": severity,
            "healthy": not findings,
            "findings": findings,
            "circuitBreaker": snapshot,
            "kafka": kafka,
            "outbox": outbox,
        }

    def failure_pattern(self, time_range: str | None = None) -> dict[str, Any]:
        """What the breaker and the API did over ``time_range`` (default 1h), from Prometheus."""
        now = utc_now()
        window = parse_time_range(time_range, now, default="1h", field="timeRange")
        # PromQL ranges end now: a window is read as "since its start" (all → the 7-day cap).
        since = window.start if window.start is not None else now - MAX_ANALYSIS_WINDOW
        seconds = max(60, min(int((now - since).total_seconds()), int(MAX_ANALYSIS_WINDOW.total_seconds())))
        cb = f'name="{BREAKER_NAME}"'
        span = f"[{seconds}s]"
        queries = {
            "callsByKind": (
                f"sum by (kind) (increase(resilience4j_circuitbreaker_calls_seconds_count{{{cb}}}{span}))"
            ),
            "notPermittedCalls": (
                f"sum(increase(resilience4j_circuitbreaker_not_permitted_calls_total{{{cb}}}{span}))"
            ),
            "openFraction": (
                f'max(avg_over_time(resilience4j_circuitbreaker_state{{{cb},state=~"open|forced_open"}}{span}))'
            ),
            "halfOpenSeen": (
                f'max(max_over_time(resilience4j_circuitbreaker_state{{{cb},state="half_open"}}{span}))'
            ),
            "peakFailureRate": f"max(max_over_time(resilience4j_circuitbreaker_failure_rate{{{cb}}}{span}))",
            "serverErrorsByUri": (
                "sum by (application, uri, status) "
                f'(increase(http_server_requests_seconds_count{{status=~"5.."}}{span}))'
            ),
        }
        client = PrometheusClient(self.settings.prometheus_url, self.config.prometheus_timeout_seconds)
        results: dict[str, Any] = {}
        try:
            for name, promql in queries.items():
                results[name] = [{"labels": s.labels, "value": s.value} for s in client.query(promql)]
        except PrometheusUnavailable as exc:
            return {
                "summary": f"cannot analyse: {exc}",
                "prometheusReachable": False,
                "error": str(exc),
                "windowSeconds": seconds,
                "queries": queries,
            }

        def scalar(name: str) -> float | None:
            return results[name][0]["value"] if results[name] else None

        calls = {
            item["labels"].get("kind", "unknown"): round(item["value"]) for item in results["callsByKind"]
        }
        total = sum(calls.values())
        failed = calls.get("failed", 0)
        open_fraction = scalar("openFraction")
        errors = [
            {**item["labels"], "count": round(item["value"])}
            for item in results["serverErrorsByUri"]
            if round(item["value"])
        ]
        observations = []
        if not any(results.values()):
            observations.append(
                "no breaker or HTTP metrics in this window (no traffic, or targets not scraped)"
            )
        if total:
            observations.append(f"{total} publish call(s): {failed} failed ({failed * 100.0 / total:.1f}%)")
        if open_fraction:
            observations.append(f"breaker open {open_fraction * 100:.0f}% of the window")
        if scalar("halfOpenSeen"):
            observations.append("breaker went through HALF_OPEN (a recovery attempt)")
        not_permitted = round(scalar("notPermittedCalls") or 0)
        if not_permitted:
            observations.append(f"{not_permitted} call(s) refused by the open breaker")
        if errors:
            observations.append(f"{sum(e['count'] for e in errors)} HTTP 5xx response(s)")
        pattern = (
            "outage"
            if open_fraction
            else "degraded"
            if failed or errors
            else "quiet"
            if not total
            else "healthy"
        )
        summary = f"last {seconds // 60} min: {pattern}" + (
            f" - {'; '.join(observations)}" if observations else ""
        )
        return {
            "summary": summary,
            "prometheusReachable": True,
            "windowSeconds": seconds,
            "pattern": pattern,
            "calls": calls,
            "notPermittedCalls": not_permitted,
            "openFraction": open_fraction,
            "peakFailureRate": scalar("peakFailureRate"),
            "serverErrors": errors,
            "observations": observations,
            "queries": queries,
        }
