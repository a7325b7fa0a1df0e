"""The registry's routes: one request mapped to its Eureka, dashboard, health or metrics handler.

:class:`Call` is one request (its route, its account for writes, its answer);
:class:`RegistryServer` (``infra.registry.server``) runs it and turns the store's
errors into answers. A route answers at once by raising :class:`Reply`.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from botocore.exceptions import BotoCoreError, ClientError
from payfn_shared.platform import safejson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infra.net.messages import Request, Response
from infra.registry import eureka
from infra.registry.status import render_status
from infra.registry.store import STATUSES, Instance, UnknownInstanceError, now_millis

if TYPE_CHECKING:
    from infra.registry.server import RegistryServer

log = logging.getLogger("payfn.registry")

_REALM = ("WWW-Authenticate", 'Basic realm="payfn-registry"')


class Reply(Exception):
    """Raised by a route to answer at once with a status and an optional JSON message."""

    def __init__(self, status: int, message: str = "", headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class Call:
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
            raise Reply(401, "registry writes need valid credentials (HTTP Basic)", [_REALM])
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
        raise Reply(404, "not found")

    def _not_allowed(self) -> Response:
        raise Reply(405, "method not allowed")

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
            raise Reply(400, str(exc)) from None
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
            raise Reply(400, "status value required")
        if value is not None and value not in STATUSES:
            raise Reply(400, f"unknown status {value}")
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
            raise Reply(400, str(exc)) from None
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
            raise Reply(404, f"unknown application {app}")
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
