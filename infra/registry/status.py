"""The operator's status page, served by the registry next to its dashboard (``GET /status``).

What an operator looks at first, on one page that refreshes itself every few seconds:
firing alerts, each service with its instances (from the registry's own leases, so it
is right even when Prometheus is not), and the payment path's vital signs from
Prometheus (request rate and 5xx share, the kafka-publisher breaker, the outbox backlog
and its oldest event, consumer lag). Rendered on the server with a meta refresh, no
JavaScript; when Prometheus is down the page still renders the registry part.

The registry server calls :func:`render_status` with its store's ``apps()``; element
ids are stable for tests and scripts. Why it looks like this: docs/REGISTRY.md#infraregistrystatus
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from payfn_shared.monitoring.prometheus import PrometheusClient, PrometheusUnavailable
from payfn_shared.platform.config import load_settings

REFRESH_SECONDS = 5
QUERY_TIMEOUT_SECONDS = 1.5
#: The seed dashboard's request-rate query, so the page and the dashboard agree.
REQUEST_RATE = ('sum(rate(http_server_requests_seconds_count{application="ingest-service",'
                'uri=~"/payments/(authorize|capture|refund).*"}[5m]))')
ERROR_SHARE = ('sum(rate(http_server_requests_seconds_count{application="ingest-service",status=~"5.."}[5m]))'
               ' / sum(rate(http_server_requests_seconds_count{application="ingest-service"}[5m]))')
BREAKER_STATES = "max by (name, state) (resilience4j_circuitbreaker_state) == 1"
BREAKER_FAILURE_RATES = "max by (name) (resilience4j_circuitbreaker_failure_rate)"
OUTBOX_BACKLOG = "max(payfn_outbox_backlog)"
OUTBOX_OLDEST = "max(payfn_outbox_oldest_age_seconds)"
CONSUMER_LAG = "sum by (group) (payfn_consumer_lag)"
TARGETS_UP = 'sum by (service) (up{job="payfn"})'
#: Prometheus' own series of the alerts it evaluates (labels: alertname, severity, the alert's labels).
FIRING_ALERTS = 'ALERTS{alertstate="firing"}'
#: Labels that say what an alert is about, shown next to its name.
ALERT_SUBJECT_LABELS = ("service", "instance", "name", "state", "application", "collector", "group", "topic",
                        "action")


class InstanceView(Protocol):
    """What the page needs of a registered instance (``infra.registry.store.Instance`` has it)."""

    @property
    def app(self) -> str: ...

    @property
    def instance_id(self) -> str: ...

    @property
    def host_name(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def status(self) -> str: ...


@dataclass
class Vitals:
    """The figures read from Prometheus; ``error`` is set when Prometheus could not be read."""

    request_rate: float | None = None
    error_share: float | None = None
    breakers: dict[str, str] = field(default_factory=dict)
    failure_rates: dict[str, float] = field(default_factory=dict)
    outbox_backlog: float | None = None
    outbox_oldest_seconds: float | None = None
    consumer_lag: dict[str, float] = field(default_factory=dict)
    targets_up: dict[str, float] = field(default_factory=dict)
    alerts: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None


def _single(client: PrometheusClient, expr: str) -> float | None:
    """The value of a one-sample query; None when it has no (numeric) sample."""
    values = [sample.value for sample in client.query(expr) if not math.isnan(sample.value)]
    return values[0] if values else None


def _by_label(client: PrometheusClient, expr: str, label: str) -> dict[str, float]:
    return {sample.labels.get(label, ""): sample.value for sample in client.query(expr)}


def read_vitals(client: PrometheusClient) -> Vitals:
    """Every figure of the page; a Prometheus failure leaves the rest empty and says why."""
    vitals = Vitals()
    try:
        vitals.request_rate = _single(client, REQUEST_RATE)
        vitals.error_share = _single(client, ERROR_SHARE)
        vitals.breakers = {sample.labels.get("name", ""): sample.labels.get("state", "").upper()
                           for sample in client.query(BREAKER_STATES)}
        vitals.failure_rates = _by_label(client, BREAKER_FAILURE_RATES, "name")
        vitals.outbox_backlog = _single(client, OUTBOX_BACKLOG)
        vitals.outbox_oldest_seconds = _single(client, OUTBOX_OLDEST)
        vitals.consumer_lag = _by_label(client, CONSUMER_LAG, "group")
        vitals.targets_up = _by_label(client, TARGETS_UP, "service")
        vitals.alerts = [sample.labels for sample in client.query(FIRING_ALERTS)]
    except PrometheusUnavailable as exc:
        vitals.error = str(exc)
    return vitals


def _number(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}{unit}"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)


def _tile(element_id: str, label: str, value: str, level: str = "ok") -> str:
    return (f'<div class="tile {level}"><div class="label">{html.escape(label)}</div>'
            f'<div class="value" id="{element_id}">{html.escape(value)}</div></div>')


def _services(apps: Mapping[str, Sequence[InstanceView]], targets_up: dict[str, float]) -> str:
    rows = []
    for app in sorted(apps):
        instances = sorted(apps[app], key=lambda i: i.instance_id)
        up = sum(1 for instance in instances if instance.status == "UP")
        listing = "<br>".join(
            f'<span class="{html.escape(i.status)}">{html.escape(i.instance_id)} '
            f"({html.escape(i.host_name)}:{i.port}) {html.escape(i.status)}</span>" for i in instances)
        scraped = targets_up.get(app)
        level = "ok" if up == len(instances) and up > 0 else "bad"
        rows.append(
            f'<tr class="{level}"><td>{html.escape(app)}</td>'
            f'<td id="instances-{_slug(app)}">{up}</td><td>{len(instances)}</td>'
            f'<td id="scraped-{_slug(app)}">{_number(scraped)}</td><td>{listing}</td></tr>')
    body = "".join(rows) or '<tr><td colspan="5">No instances registered</td></tr>'
    return ("<table><tr><th>Service</th><th>Instances UP</th><th>Registered</th>"
            f"<th>Scraped UP</th><th>Instances</th></tr>{body}</table>")


def _alerts(vitals: Vitals) -> str:
    if vitals.error:
        return f'<p class="bad" id="prometheus-error">Prometheus unavailable: {html.escape(vitals.error)}</p>'
    if not vitals.alerts:
        return '<p class="ok" id="alerts">No alert firing</p>'
    items = "".join(
        f"<li><b>{html.escape(alert.get('alertname', '?'))}</b> [{html.escape(alert.get('severity', ''))}] "
        + html.escape(" ".join(f"{key}={alert[key]}" for key in ALERT_SUBJECT_LABELS if key in alert))
        + "</li>" for alert in sorted(vitals.alerts, key=lambda a: a.get("alertname", "")))
    return f'<ul class="bad" id="alerts">{items}</ul>'


def render_page(apps: Mapping[str, Sequence[InstanceView]], vitals: Vitals, generated_at: float) -> str:
    """The page's HTML for the given registry content and Prometheus figures (pure, no I/O)."""
    breaker_tiles = []
    for name in sorted(vitals.breakers) or ["kafka-publisher"]:
        state = vitals.breakers.get(name, "—")
        level = "ok" if state in ("CLOSED", "DISABLED") else "warn" if state == "HALF_OPEN" else "bad"
        breaker_tiles.append(_tile(f"breaker-state-{_slug(name)}", f"breaker {name}", state, level))
        breaker_tiles.append(_tile(f"breaker-failure-rate-{_slug(name)}", f"{name} failure rate",
                                   _number(vitals.failure_rates.get(name), 1, " %")))
    oldest = vitals.outbox_oldest_seconds
    lag = sum(vitals.consumer_lag.values()) if vitals.consumer_lag else None
    share = vitals.error_share
    tiles = [
        _tile("request-rate", "payments req/s (5m)", _number(vitals.request_rate, 2)),
        _tile("error-share", "5xx share (5m)", _number(None if share is None else share * 100, 2, " %"),
              "bad" if share and share > 0.01 else "ok"),
        *breaker_tiles,
        _tile("outbox-backlog", "outbox backlog", _number(vitals.outbox_backlog),
              "warn" if vitals.outbox_backlog else "ok"),
        _tile("outbox-oldest", "oldest unpublished", _number(oldest, 1, " s"),
              "bad" if oldest and oldest > 60 else "ok"),
        _tile("consumer-lag", "consumer lag", _number(lag), "warn" if lag and lag > 1000 else "ok"),
    ]
    lag_rows = "".join(f"<tr><td>{html.escape(group)}</td><td>{_number(value)}</td></tr>"
                       for group, value in sorted(vitals.consumer_lag.items()))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated_at))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>payfn status</title>
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<style>
body{{font-family:sans-serif;margin:1.5em;background:#111;color:#ddd}}
h1,h2{{font-weight:normal}} a{{color:#8ab4f8}}
.tiles{{display:flex;flex-wrap:wrap;gap:10px}}
.tile{{padding:10px 14px;border-radius:6px;min-width:150px;background:#1d3b1d}}
.tile.warn{{background:#4a3b10}} .tile.bad{{background:#5a1d1d}}
.tile .label{{font-size:12px;color:#aaa}} .tile .value{{font-size:24px}}
table{{border-collapse:collapse;margin-top:8px}}
td,th{{border:1px solid #444;padding:4px 8px;text-align:left}}
tr.bad td:first-child{{color:#f66}} .UP{{color:#7c7}} .DOWN,.OUT_OF_SERVICE{{color:#f66}}
.STARTING{{color:#fc6}}
p.ok,.ok{{color:#7c7}} .bad{{color:#f66}}
</style></head>
<body><h1>payfn status</h1>
<p>Generated <span id="generated-at">{stamp}</span> · refreshes every {REFRESH_SECONDS} s ·
<a href="/">registry dashboard</a></p>
<h2>Alerts</h2>{_alerts(vitals)}
<h2>Payment path</h2><div class="tiles">{"".join(tiles)}</div>
<h2>Services</h2>{_services(apps, vitals.targets_up)}
<h2>Consumer lag by group</h2>
<table><tr><th>Group</th><th>Lag</th></tr>{lag_rows or '<tr><td colspan="2">no data</td></tr>'}</table>
</body></html>"""


def render_status(apps: Mapping[str, Sequence[InstanceView]], prometheus_url: str | None = None) -> bytes:
    """The status page for the registry's current ``apps`` (what the ``/status`` route sends)."""
    client = PrometheusClient(prometheus_url or load_settings().prometheus_url, QUERY_TIMEOUT_SECONDS)
    return render_page(apps, read_vitals(client), time.time()).encode("utf-8")
