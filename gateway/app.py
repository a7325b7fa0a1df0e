"""The gateway's request pipeline: route, build the event, invoke a function, answer.

Errors are answered the way each layer would answer them in production: the
routing layer (no route, no instance) with payfn's error body ``{code, message,
paymentId}``; the API Gateway layer (function failed, timed out, throttled,
malformed result) with API Gateway's own ``{"message": ...}`` bodies, so a client
sees the same thing locally as behind a real API Gateway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from payfn_shared.platform.registry import DiscoveredInstance, Discovery

from gateway.api_map import ApiMap, ApiRoute, MethodNotAllowed
from gateway.config import GatewayConfig
from gateway.events import ProxyResultError, build_event, clean_headers, map_result, new_request_id
from gateway.metrics import CONTENT_TYPE, GatewayMetrics
from gateway.spring_routes import Failure, GatewayRoute
from gateway.upstream import (
    ConnectFailed,
    UpstreamConnectionLost,
    UpstreamError,
    UpstreamPools,
    UpstreamTimeout,
)
from infra.net.invoke import INVOKE_TOKEN_HEADER
from infra.net.limits import Limits, load_limits
from infra.net.messages import Refusal, Request, Response
from infra.net.server import HttpServer
from infra.sam.template import load_template

log = logging.getLogger("payfn.gateway")
INVOKE_PATH = "/2015-03-31/functions/{}/invocations"
JSON = ("Content-Type", "application/json")
#: ``kind`` label of the retry and error counters.
_FAILURE_KIND = {Failure.CONNECT: "connect_failure", Failure.CONNECTION_LOST: "connection_lost"}


def error_body(code: str, message: str) -> bytes:
    """payfn's error body (SPEC: ``{code, message, paymentId}``)."""
    return orjson.dumps({"code": code, "message": message, "paymentId": None})


def _aws_message(message: str) -> bytes:
    return orjson.dumps({"message": message})


class AccessLog:
    """One line per request, written in batches: a write per request would cost a syscall each."""

    def __init__(self, stream: object = None, flush_interval: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.flush_interval = flush_interval
        self._lines: list[str] = []
        self._scheduled = False

    def write(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= 256:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            lines, self._lines = self._lines, []
            self.stream.write("\n".join(lines) + "\n")  # type: ignore[attr-defined]
            self.stream.flush()  # type: ignore[attr-defined]


@dataclass(slots=True)
class _Outcome:
    response: Response
    route_id: str = ""
    route_uri: str = ""
    uri: str = "NOT_FOUND"
    target: str = "-"


class Gateway:
    """Routes, the API map, the service directory and the metrics of one gateway process.

    The directory (the shared :class:`Discovery`) is refreshed every
    ``gateway_refresh_interval`` on a thread, so the loop never waits on the registry;
    the gateway keeps one connection pool per instance it lists.
    """

    def __init__(self, routes: list[GatewayRoute], api_map: ApiMap, directory: Discovery,
                 config: GatewayConfig, access_log: AccessLog | None = None,
                 template: Path | None = None, limits: Limits | None = None,
                 invoke_token: str = "") -> None:
        self.routes = routes
        self.api_map = api_map
        self.template = template
        self._template_mtime = template.stat().st_mtime if template is not None else 0.0
        self._watcher: asyncio.Task[None] | None = None
        self.directory = directory
        self.pools = UpstreamPools(config.gateway_pool_size, config.gateway_connect_timeout)
        self._refresher: asyncio.Task[None] | None = None
        self.config = config
        self.metrics = GatewayMetrics()
        # Rendering the exposition takes tens of ms once the label sets have grown (every
        # uri × method × status), and Prometheus scrapes every 5 s: on the event loop that
        # would stall every request in flight, so it runs on one thread (scrapes serialised).
        self._scrape = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrape")
        self.access_log = access_log if config.gateway_access_log else None
        self._invoke_headers = [("Content-Type", "application/json"),
                                ("X-Amz-Invocation-Type", "RequestResponse")]
        if invoke_token:
            self._invoke_headers.append((INVOKE_TOKEN_HEADER, invoke_token))
        self.http = HttpServer(self.handle, limits or load_limits(config.gateway_max_body_bytes), self.refuse)

    def refuse(self, refusal: Refusal) -> Response:
        """A request the server answered itself (too large, stalled, malformed): payfn's error body."""
        response = Response(refusal.status, error_body(refusal.code, refusal.message), [JSON])
        request = Request(refusal.method or "-", refusal.path or "-", "", [], b"")
        self._finish(request, _Outcome(response), time.perf_counter(), new_request_id())
        return response

    @staticmethod
    def _request_id(request: Request) -> str:
        return request.header("x-request-id") or new_request_id()

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = self._request_id(request)
        self._add_forwarding_headers(request, request_id)
        outcome = await self._route(request, request_id)
        return self._finish(request, outcome, started, request_id)

    def _finish(self, request: Request, outcome: _Outcome, started: float,
                request_id: str) -> Response:
        response = outcome.response
        if not any(name.lower() == "x-request-id" for name, _ in response.headers):
            response.headers.append(("X-Request-Id", request_id))
        elapsed = time.perf_counter() - started
        self.metrics.observe(outcome.route_id, outcome.route_uri, outcome.uri, request.method,
                             response.status, elapsed)
        if self.access_log is not None:
            self.access_log.write(
                f'{request.source_ip} "{request.method} {request.path}{"?" if request.query else ""}'
                f'{request.query}" {response.status} {len(response.body)} {elapsed * 1000:.1f}ms '
                f"id={request_id} route={outcome.route_id or '-'} upstream={outcome.target}"
            )
        return response

    @staticmethod
    def _add_forwarding_headers(request: Request, request_id: str) -> None:
        """The headers API Gateway adds before the function sees the request, plus the request id."""
        forwarded_for = request.header("x-forwarded-for")
        if forwarded_for:
            request.replace_header("X-Forwarded-For", f"{forwarded_for}, {request.source_ip}")
        else:
            request.add_header("X-Forwarded-For", request.source_ip)
        if not request.header("x-forwarded-proto"):
            request.add_header("X-Forwarded-Proto", "http")
        if not request.header("x-forwarded-port"):
            request.add_header("X-Forwarded-Port", str(request.server_port))
        if not request.header("x-request-id"):
            request.add_header("X-Request-Id", request_id)

    async def _route(self, request: Request, request_id: str) -> _Outcome:
        path = request.path
        if path.startswith("/actuator/"):
            return await self._actuator(request)
        route = next((r for r in self.routes if r.matches(request.method, path)), None)
        if route is None or route.service is None:
            return _Outcome(Response(
                404, error_body("NOT_FOUND", f"No route for {request.method} {path}"), [JSON]))
        service = route.service
        stripped = route.rewrite(path)
        prefix = path[: len(path) - len(stripped)] if path.endswith(stripped) else ""
        origin = request.header("origin")
        if request.method == "OPTIONS" and origin and request.header("access-control-request-method"):
            api_route = self.api_map.any_route(service, stripped)
            if api_route is not None and api_route.api.cors is not None:
                headers = api_route.api.cors.preflight_headers(origin)
                return _Outcome(Response(200, b"", [JSON, *headers]), route.id, route.uri,
                                prefix + api_route.resource)
        try:
            matched = self.api_map.match(service, request.method, stripped)
        except MethodNotAllowed:
            return _Outcome(Response(
                405, error_body("METHOD_NOT_ALLOWED", f"{request.method} is not allowed on {stripped}"),
                [JSON]), route.id, route.uri)
        if matched is None:
            return _Outcome(Response(
                404, error_body("NOT_FOUND", f"No function for {request.method} {stripped}"), [JSON]),
                route.id, route.uri)
        api_route, params = matched
        outcome = await self._invoke(request, service, route, api_route, stripped, params, request_id)
        outcome.route_id, outcome.route_uri, outcome.uri = route.id, route.uri, prefix + api_route.resource
        cors = api_route.api.cors
        if cors is not None and origin and not any(
                name.lower() == "access-control-allow-origin" for name, _ in outcome.response.headers):
            outcome.response.headers.extend(cors.response_headers(origin))
        return outcome

    async def _invoke(self, request: Request, service: str, gateway_route: GatewayRoute,
                      route: ApiRoute, path: str, params: dict[str, str], request_id: str) -> _Outcome:
        """Invoke the function on an instance, re-sending as the route's :class:`RetryPolicy` allows.

        A failed attempt's instance is quarantined (refused or dropped connection) and
        the retry goes to another instance when there is one. Only failures before any
        answer byte are ever retried: an answer that started, a 5xx and a timeout are not.
        """
        host = request.header("host", "localhost")
        event = build_event(request, route, path, params, new_request_id(), time.time(), host)
        payload = orjson.dumps(event)
        timeout = min(route.timeout + 1.0, self.config.gateway_integration_timeout)
        target_path = INVOKE_PATH.format(route.function)
        policy = gateway_route.retry
        tried: set[str] = set()
        retry, wait = 0, 0.0
        while True:
            target = await self._pick(service, tried)
            if target is None:
                message = f"No instance of {service} is available" + (" (all failed)" if tried else "")
                return _Outcome(Response(503, error_body("SERVICE_UNAVAILABLE", message), [JSON]))
            tried.add(target.instance_id)
            try:
                answer = await self.pools.get(target.host, target.port).request(
                    "POST", target_path, payload, self._invoke_headers, timeout)
            except ConnectFailed as failure:
                if failure.refused:
                    self.directory.suspend(target, "refused the connection")
                kind, error = Failure.CONNECT, failure
            except UpstreamConnectionLost as lost:
                self.directory.suspend(target, "dropped a connection it had a request on")
                if lost.answer_started:
                    log.warning("request %s to %s failed during the answer: %s", request_id,
                                target.instance_id, lost)
                    self.metrics.upstream_errors.labels(service, "connection").inc()
                    return self._aws_error(502, "Internal server error", target)
                kind, error = Failure.CONNECTION_LOST, lost
            except UpstreamTimeout:
                self.metrics.upstream_errors.labels(service, "timeout").inc()
                return self._aws_error(504, "Endpoint request timed out", target)
            except UpstreamError as exc:
                log.warning("request %s to %s failed: %s", request_id, target.instance_id, exc)
                self.metrics.upstream_errors.labels(service, "malformed_answer").inc()
                return self._aws_error(502, "Internal server error", target)
            else:
                return self._answer(service, route, target, answer.status, answer.headers, answer.body,
                                    request_id)
            if retry >= policy.retries or not policy.retries_after(kind, request.method):
                return self._not_retried(service, kind, error, request, target, request_id)
            retry += 1
            self.metrics.retries.labels(service, _FAILURE_KIND[kind]).inc()
            wait = policy.backoff(retry, wait)
            if wait > 0:
                await asyncio.sleep(wait)

    def _not_retried(self, service: str, kind: Failure, error: UpstreamError, request: Request,
                     target: DiscoveredInstance, request_id: str) -> _Outcome:
        """The answer when a failure is not (or no longer) retried: 503 if nothing was sent, else 502."""
        log.warning("request %s (%s %s) to %s failed, not retried: %s", request_id, request.method,
                    request.path, target.instance_id, error)
        self.metrics.upstream_errors.labels(service, _FAILURE_KIND[kind]).inc()
        if kind is Failure.CONNECT:
            return _Outcome(Response(503, error_body(
                "SERVICE_UNAVAILABLE", f"No instance of {service} accepted the connection"), [JSON]),
                target=f"{target.host}:{target.port}")
        return self._aws_error(502, "Internal server error", target)

    def _aws_error(self, status: int, message: str, target: DiscoveredInstance) -> _Outcome:
        return _Outcome(Response(status, _aws_message(message), [JSON]),
                        target=f"{target.host}:{target.port}")

    def _answer(self, service: str, route: ApiRoute, target: DiscoveredInstance, status: int,
                headers: dict[str, str], body: bytes, request_id: str) -> _Outcome:
        """Lambda's Invoke answer → the client's response, with API Gateway's error mapping."""
        if status == 429:
            self.metrics.upstream_errors.labels(service, "throttled").inc()
            return self._aws_error(429, "Too Many Requests", target)
        if status != 200:
            log.warning("request %s: host %s answered HTTP %s for %s: %s", request_id, target.instance_id,
                        status, route.function, body[:200])
            self.metrics.upstream_errors.labels(service, f"invoke_{status}").inc()
            return self._aws_error(502, "Internal server error", target)
        if "x-amz-function-error" in headers:
            timed_out = b"Sandbox.Timedout" in body or b"Task timed out" in body
            self.metrics.upstream_errors.labels(service, "timeout" if timed_out else "function_error").inc()
            log.warning("request %s: %s failed: %s", request_id, route.function, body[:300])
            if timed_out:
                return self._aws_error(504, "Endpoint request timed out", target)
            return self._aws_error(502, "Internal server error", target)
        try:
            mapped = map_result(route, body)
        except ProxyResultError as exc:
            log.warning("request %s: malformed Lambda proxy response from %s: %s", request_id,
                        route.function, exc)
            self.metrics.upstream_errors.labels(service, "malformed_result").inc()
            return self._aws_error(502, "Internal server error", target)
        return _Outcome(Response(mapped.status, mapped.body, clean_headers(mapped.headers)),
                        target=f"{target.host}:{target.port}")

    async def _actuator(self, request: Request) -> _Outcome:
        if request.method not in ("GET", "HEAD"):
            return _Outcome(Response(405, error_body("METHOD_NOT_ALLOWED", "use GET"), [JSON]))
        if request.path == "/actuator/health":
            reachable = self.directory.registry_reachable
            body = {
                "status": "UP",
                "components": {
                    "registry": {
                        "status": "UP" if reachable else "DOWN",
                        "details": {"lastError": self.directory.last_error,
                                    "services": self.directory.snapshot(),
                                    "quarantined": self.directory.quarantined()},
                    },
                    "routes": {"status": "UP", "details": {r.id: r.uri for r in self.routes}},
                },
            }
            return _Outcome(Response(200, orjson.dumps(body), [JSON]), uri="/actuator/health")
        if request.path == "/actuator/prometheus":
            text = await asyncio.get_running_loop().run_in_executor(self._scrape, self.metrics.render)
            return _Outcome(Response(200, text, [("Content-Type", CONTENT_TYPE)]), uri="/actuator/prometheus")
        return _Outcome(Response(
            404, error_body("NOT_FOUND", f"No route for {request.path}"), [JSON]))

    async def _pick(self, service: str, tried: set[str]) -> DiscoveredInstance | None:
        """The directory's next instance; a service with no usable one triggers one prompt refresh."""
        target = self.directory.pick(service, tried)
        if target is None and self.directory.prompt_refresh_allowed():
            await self.refresh_directory()
            target = self.directory.pick(service, tried)
        return target

    async def refresh_directory(self) -> bool:
        """Fetch the registry once (on a thread), then drop the pools of instances gone from it."""
        ok = await asyncio.to_thread(self.directory.refresh)
        self.pools.keep_only(self.directory.endpoints())
        return ok

    async def _refresh_directory_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.gateway_refresh_interval)
            await self.refresh_directory()

    async def serve(self, host: str, port: int) -> int:
        """Fetch the registry once (so the first requests find instances), then listen; returns the port."""
        await self.refresh_directory()
        loop = asyncio.get_running_loop()
        self._refresher = loop.create_task(self._refresh_directory_forever())
        if self.template is not None:
            self._watcher = loop.create_task(self._watch_template(self.template))
        return await self.http.start(host, port)

    async def _watch_template(self, template: Path) -> None:
        """Pick up template edits (new functions, paths) without a restart, as hosts pick up code.

        A template that does not load (half-saved, invalid) is reported and the
        previous API map kept: an edit must never take the edge down.
        """
        while True:
            await asyncio.sleep(self.config.gateway_refresh_interval)
            try:
                mtime = template.stat().st_mtime
                if mtime == self._template_mtime:
                    continue
                self._template_mtime = mtime
                self.api_map = ApiMap.from_template(load_template(template))
                log.info("template changed: API map reloaded (%s)", ", ".join(self.api_map.services()))
            except Exception as exc:  # any loading error keeps the old map
                log.warning("template %s not reloaded: %s", template, exc)

    async def close(self) -> None:
        await self.http.close()
        if self._watcher is not None:
            self._watcher.cancel()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        self.directory.close()
        self.pools.close()
        self._scrape.shutdown(wait=False, cancel_futures=True)
        if self.access_log is not None:
            self.access_log.flush()
