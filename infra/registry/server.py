"""The registry's HTTP face: Eureka's REST API, a dashboard, health and metrics.

Reads are open; writes need a registry account (``infra.registry.accounts``) and only
the account that registered a lease may change it. Register bodies go through the
one validator (``eureka.instance_from_document``), so what is stored always lists.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

from botocore.exceptions import BotoCoreError, ClientError
from payfn_shared.platform import safejson
from payfn_shared.platform.config import ConfigError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from infra.net.http_metrics import http_server_requests, outcome_of
from infra.net.limits import Limits, load_limits
from infra.net.messages import Request, Response
from infra.net.server import HttpServer, ThreadedServer, blocking
from infra.registry import eureka
from infra.registry.accounts import RegistryAccounts
from infra.registry.status import render_status
from infra.registry.store import (
    STATUSES,
    Instance,
    NotOwnerError,
    RegistryStore,
    UnknownInstanceError,
    now_millis,
)

log = logging.getLogger("payfn.registry")


@dataclass(frozen=True)
class RegistryConfig:
    """Lease and cache knobs (``PAYFN_REGISTRY_*``); a client's own leaseInfo wins when it sends one."""

    registry_lease_duration: int = 90
    registry_renewal_interval: int = 30
    registry_eviction_interval: float = 60.0
    registry_cache_ttl: float = 1.0

    def validate(self) -> None:
        if self.registry_lease_duration < 1 or self.registry_renewal_interval < 1:
            raise ConfigError("PAYFN_REGISTRY_LEASE_DURATION and _RENEWAL_INTERVAL must be ≥ 1 s")
        if self.registry_renewal_interval >= self.registry_lease_duration:
            raise ConfigError("PAYFN_REGISTRY_RENEWAL_INTERVAL must be shorter than the lease duration")
        if self.registry_eviction_interval <= 0 or self.registry_cache_ttl < 0:
            raise ConfigError("PAYFN_REGISTRY_EVICTION_INTERVAL must be > 0 and _CACHE_TTL ≥ 0")


class _InstancesCollector(Collector):
    """``registry_instances{app,status}`` computed from the (cached) leases at scrape time."""

    def __init__(self, store: RegistryStore) -> None:
        self._store = store

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "registry_instances", "Live registered instances", labels=["app", "status"]
        )
        counts: dict[tuple[str, str], int] = {}
        for instance in self._store.all_instances():
            key = (instance.app, instance.status)
            counts[key] = counts.get(key, 0) + 1
        for (app, status), count in sorted(counts.items()):
            family.add_metric([app, status], count)
        yield family


class RegistryMetrics:
    """The registry's own Prometheus registry (one per server, so tests can run several)."""

    def __init__(self, store: RegistryStore) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_InstancesCollector(store))
        self.operations = Counter(
            "registry_operations", "Eureka operations by kind and outcome",
            ["operation", "outcome"], registry=self.registry,
        )
        self.evictions = Counter("registry_evictions", "Leases evicted by the sweep", registry=self.registry)
        self.requests = http_server_requests(self.registry)


#: Register bodies are a few KiB (metadata is bounded at 16 KiB by ``eureka``).
REGISTRY_MAX_BODY_BYTES = 64 * 1024
#: Writes, answered 401 without valid credentials (reads stay open).
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE"})
_REALM = ("WWW-Authenticate", 'Basic realm="payfn-registry"')


class RegistryServer:
    """Eureka's REST API over a :class:`RegistryStore`, on the one HTTP server.

    The store's calls block (boto3), so requests are answered on a thread pool; the
    event loop only frames and writes. ``start_in_thread`` serves from a thread of
    its own (the registry's main and the tests use it).
    """

    def __init__(self, store: RegistryStore, config: RegistryConfig, accounts: RegistryAccounts,
                 limits: Limits | None = None) -> None:
        self.store = store
        self.config = config
        self.accounts = accounts
        self.metrics = RegistryMetrics(store)
        self.started = time.time()
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="registry")
        self.http = HttpServer(blocking(self.handle, self._executor),
                               limits or load_limits(REGISTRY_MAX_BODY_BYTES))
        self._thread: ThreadedServer | None = None
        self.host, self.port = "127.0.0.1", 0
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="registry-sweep", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start_in_thread(self, host: str, port: int) -> int:
        """Listen (raises what binding raised) and serve from a thread; returns the port."""
        self._thread = ThreadedServer(self.http, host, port)
        self.host, self.port = host, self._thread.start()
        return self.port

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def start_sweeper(self) -> None:
        self._sweeper.start()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.config.registry_eviction_interval):
            self.sweep()

    def sweep(self) -> list[Instance]:
        """Evict expired leases now; failures are logged (the next sweep tries again)."""
        try:
            evicted = self.store.evict_expired()
        except (BotoCoreError, ClientError) as exc:
            log.warning("eviction sweep failed: %s", exc)
            return []
        for instance in evicted:
            log.info("evicted %s/%s (lease expired)", instance.app, instance.instance_id)
        self.metrics.evictions.inc(len(evicted))
        return evicted

    def handle(self, request: Request) -> Response:
        """Route one request; every answer is counted in ``http_server_requests_seconds``."""
        start = time.perf_counter()
        call = _Call(self, request)
        route, handler = call.route()
        try:
            response = handler()
        except _Reply as reply:
            response = call.reply(reply.status, reply.message, reply.headers)
        except UnknownInstanceError as exc:
            response = call.reply(404, f"unknown instance {exc}")
        except NotOwnerError as exc:
            call.count("forbidden")
            response = call.reply(403, f"instance {exc} was registered by another account")
        except (BotoCoreError, ClientError) as exc:
            log.warning("DynamoDB call failed: %s", exc)
            response = call.reply(503, "registry table unavailable")
        self.metrics.requests.labels("registry", route, request.method, str(response.status),
                                     outcome_of(response.status)).observe(time.perf_counter() - start)
        return response


class _Reply(Exception):
    """Raised by a route to answer at once with a status and an optional JSON message."""

    def __init__(self, status: int, message: str = "", headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class _Call:
    """One request to the registry: its route, its account (for writes) and its answer."""

    def __init__(self, server: RegistryServer, request: Request) -> None:
        self.server = server
        self.request = request
        self.method = "GET" if request.method == "HEAD" else request.method
        self.query = dict(parse_qsl(request.query, keep_blank_values=True))
        self.operation = ""

    # --- plumbing -------------------------------------------------------------------

    def send(self, status: int, body: bytes = b"", content_type: str = "application/json",
             headers: list[tuple[str, str]] | None = None) -> Response:
        response = Response(status, body, list(headers or ()))
        if body or status not in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED):
            response.headers.insert(0, ("Content-Type", content_type))
        return response

    def reply(self, status: int, message: str = "", headers: list[tuple[str, str]] | None = None) -> Response:
        body = json.dumps({"error": message}).encode() if message else b""
        return self.send(status, body, headers=headers)

    def wants_json(self) -> bool:
        """Jersey's negotiation as Eureka uses it: JSON only when asked before XML."""
        accept = self.request.header("accept").lower()
        json_at, xml_at = accept.find("json"), accept.find("xml")
        return json_at >= 0 and (xml_at < 0 or json_at < xml_at)

    def send_document(self, document: dict[str, Any]) -> Response:
        if self.wants_json():
            return self.send(200, json.dumps(document, separators=(",", ":")).encode())
        return self.send(200, eureka.to_xml(document), "application/xml")

    def account(self, operation: str) -> str:
        """The account a write is made with; 401 (nothing changes) without valid credentials."""
        self.operation = operation
        account = self.server.accounts.authenticate(self.request.header("authorization"))
        if account is None:
            self.count("unauthorized")
            raise _Reply(401, "registry writes need valid credentials (HTTP Basic)", [_REALM])
        return account

    def count(self, outcome: str) -> None:
        if self.operation:
            self.server.metrics.operations.labels(self.operation, outcome).inc()

    def route(self) -> tuple[str, Callable[[], Response]]:
        """(uri template for metrics, handler) for a path; Eureka's ``/eureka`` prefix is optional."""
        method = self.method
        segments = [unquote(s) for s in self.request.path.split("/") if s]
        if segments and segments[0] == "eureka":
            segments = segments[1:]
        if not segments:
            return "/", self._dashboard if method == "GET" else self._not_allowed
        head, rest = segments[0], segments[1:]
        if head in ("health", "metrics") and not rest and method == "GET":
            return f"/{head}", self._health if head == "health" else self._metrics
        if head == "status" and not rest and method == "GET":
            return "/status", self._status_page
        if head == "instances" and len(rest) == 1 and method == "GET":
            return "/eureka/instances/{id}", lambda: self._get_by_id(rest[0])
        if head == "vips" and len(rest) == 1 and method == "GET":
            return "/eureka/vips/{vip}", lambda: self._get_vip(rest[0])
        if head != "apps":
            return "NOT_FOUND", self._not_found
        if not rest:
            return "/eureka/apps", self._get_apps if method == "GET" else self._not_allowed
        if rest == ["delta"]:
            return "/eureka/apps/delta", self._get_delta if method == "GET" else self._not_allowed
        app = rest[0].upper()
        if len(rest) == 1:
            table = {"GET": lambda: self._get_app(app), "POST": lambda: self._register(app)}
            return "/eureka/apps/{app}", table.get(method, self._not_allowed)
        instance_id = rest[1]
        if len(rest) == 2:
            table = {
                "GET": lambda: self._get_instance(app, instance_id),
                "PUT": lambda: self._renew(app, instance_id),
                "DELETE": lambda: self._cancel(app, instance_id),
            }
            return "/eureka/apps/{app}/{id}", table.get(method, self._not_allowed)
        if len(rest) == 3 and rest[2] == "status":
            table = {
                "PUT": lambda: self._set_status(app, instance_id),
                "DELETE": lambda: self._delete_status(app, instance_id),
            }
            return "/eureka/apps/{app}/{id}/status", table.get(method, self._not_allowed)
        if len(rest) == 3 and rest[2] == "metadata" and method == "PUT":
            return "/eureka/apps/{app}/{id}/metadata", lambda: self._update_metadata(app, instance_id)
        return "NOT_FOUND", self._not_found

    def _not_found(self) -> Response:
        raise _Reply(404, "not found")

    def _not_allowed(self) -> Response:
        raise _Reply(405, "method not allowed")

    # --- Eureka writes --------------------------------------------------------------

    def _register(self, app: str) -> Response:
        account = self.account("register")
        body = self.request.body
        content_type = self.request.header("content-type").lower()
        try:
            if "xml" in content_type or body.lstrip().startswith(b"<"):
                document = eureka.parse_instance_xml(body)
            else:
                parsed = safejson.loads(body or b"null")
                document = parsed.get("instance") if isinstance(parsed, dict) else None
                if not isinstance(document, dict):
                    raise eureka.BadInstanceError('JSON body must be {"instance": {...}}')
            config = self.server.config
            instance = eureka.instance_from_document(
                app, document, config.registry_lease_duration, config.registry_renewal_interval
            )
        except ValueError as exc:  # BadInstanceError, JsonRejected
            self.count("rejected")
            raise _Reply(400, str(exc)) from None
        instance.owner = account
        self.server.store.register(instance)
        self.count("ok")
        log.info("registered %s/%s at %s:%s (%s) for %s", app, instance.instance_id, instance.host_name,
                 instance.port, instance.status, account)
        return self.send(204)

    def _renew(self, app: str, instance_id: str) -> Response:
        account = self.account("renew")
        try:
            self.server.store.renew(app, instance_id, account)
        except UnknownInstanceError:
            self.count("unknown")
            raise
        self.count("ok")
        return self.send(200)

    def _cancel(self, app: str, instance_id: str) -> Response:
        account = self.account("cancel")
        self.server.store.cancel(app, instance_id, account)
        self.count("ok")
        log.info("cancelled %s/%s", app, instance_id)
        return self.send(200)

    def _status_value(self, required: bool) -> str | None:
        value = self.query.get("value", "").upper() or None
        if value is None and required:
            raise _Reply(400, "status value required")
        if value is not None and value not in STATUSES:
            raise _Reply(400, f"unknown status {value}")
        return value

    def _set_status(self, app: str, instance_id: str) -> Response:
        account = self.account("status")
        value = str(self._status_value(required=True))
        self.server.store.set_override(app, instance_id, value, account)
        self.count("ok")
        return self.send(200)

    def _delete_status(self, app: str, instance_id: str) -> Response:
        account = self.account("status")
        self.server.store.delete_override(app, instance_id, self._status_value(required=False), account)
        self.count("ok")
        return self.send(200)

    def _update_metadata(self, app: str, instance_id: str) -> Response:
        account = self.account("metadata")
        try:
            values = eureka.metadata_update(self.query)
        except ValueError as exc:
            raise _Reply(400, str(exc)) from None
        self.server.store.update_metadata(app, instance_id, values, account)
        self.count("ok")
        return self.send(200)

    # --- Eureka reads ---------------------------------------------------------------

    def _version(self, instances: list[Instance]) -> int:
        """Changes whenever an instance changes; deletions show in the hashcode instead."""
        return max((i.last_updated_ts for i in instances), default=0)

    def _get_apps(self) -> Response:
        apps = self.server.store.apps()
        everything = [i for instances in apps.values() for i in instances]
        return self.send_document(eureka.applications_json(apps, self._version(everything)))

    def _get_delta(self) -> Response:
        """Instances changed in the last 3 minutes (Eureka's window), hash over the whole registry.

        Removals are not listed: the client sees the hashcode disagree and fetches
        the full registry, which is the recovery Eureka clients are built for.
        """
        everything = self.server.store.all_instances()
        since = now_millis() - 180_000
        recent: dict[str, list[Instance]] = {}
        for instance in everything:
            if instance.last_updated_ts >= since:
                recent.setdefault(instance.app, []).append(instance)
        return self.send_document(
            eureka.applications_json(recent, self._version(everything), "MODIFIED", hash_over=everything)
        )

    def _get_app(self, app: str) -> Response:
        instances = self.server.store.apps().get(app)
        if not instances:
            raise _Reply(404, f"unknown application {app}")
        return self.send_document({"application": eureka.application_json(app, instances)})

    def _get_vip(self, vip: str) -> Response:
        matching: dict[str, list[Instance]] = {}
        for instance in self.server.store.all_instances():
            if (instance.document.get("vipAddress") or instance.app.lower()) == vip:
                matching.setdefault(instance.app, []).append(instance)
        everything = [i for instances in matching.values() for i in instances]
        return self.send_document(eureka.applications_json(matching, self._version(everything)))

    def _get_instance(self, app: str, instance_id: str) -> Response:
        return self.send_document({"instance": eureka.instance_json(self.server.store.get(app, instance_id))})

    def _get_by_id(self, instance_id: str) -> Response:
        return self.send_document({"instance": eureka.instance_json(self.server.store.find(instance_id))})

    # --- operator pages ---------------------------------------------------------------

    def _health(self) -> Response:
        try:
            count = len(self.server.store.all_instances())
        except (BotoCoreError, ClientError) as exc:
            body = {"status": "DOWN", "table": self.server.store.table, "error": str(exc)}
            return self.send(503, json.dumps(body).encode())
        body = {"status": "UP", "table": self.server.store.table, "instances": count}
        return self.send(200, json.dumps(body).encode())

    def _metrics(self) -> Response:
        return self.send(200, generate_latest(self.server.metrics.registry), CONTENT_TYPE_LATEST)

    def _status_page(self) -> Response:
        """The operator's first look: instances, breaker, outbox, lag, request rate (status.py)."""
        return self.send(200, render_status(self.server.store.apps()), "text/html; charset=utf-8")

    def _dashboard(self) -> Response:
        apps = self.server.store.apps()
        now = now_millis()
        rows = []
        for app, instances in apps.items():
            for i in instances:
                age = (now - i.last_renewal_ts) / 1000
                left = i.expires_at - now / 1000
                metadata = ", ".join(f"{k}={v}" for k, v in sorted(i.metadata.items()))
                rows.append(
                    f"<tr><td>{html.escape(app)}</td><td>{html.escape(i.instance_id)}</td>"
                    f"<td>{html.escape(i.host_name)}:{i.port}</td>"
                    f'<td class="{html.escape(i.status)}">{html.escape(i.status)}</td>'
                    f"<td>{age:.1f} s ago</td><td>{left:.0f} s</td>"
                    f"<td>{html.escape(metadata)}</td></tr>"
                )
        summary = ", ".join(f"{html.escape(app)} ({len(items)})" for app, items in apps.items()) or "none"
        page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>payfn registry</title>
<meta http-equiv="refresh" content="5">
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.UP{{color:#080}}
.DOWN,.OUT_OF_SERVICE{{color:#b00}}.STARTING{{color:#a60}}</style></head>
<body><h1>payfn registry</h1>
<p>Table <code>{html.escape(self.server.store.table)}</code> · services: {summary} ·
leases {self.server.config.registry_lease_duration} s, renewals every
{self.server.config.registry_renewal_interval} s</p>
<table><tr><th>Application</th><th>Instance</th><th>Address</th><th>Status</th>
<th>Last renewal</th><th>Lease left</th><th>Metadata</th></tr>
{"".join(rows) or '<tr><td colspan="7">No instances registered</td></tr>'}
</table></body></html>"""
        return self.send(200, page.encode(), "text/html; charset=utf-8")
