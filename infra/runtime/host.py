"""A function host: Lambda's runtime emulation for one service instance.

``python -m infra.runtime.host --service NAME`` runs every template function tagged
``payfn:service: NAME`` behind Lambda's Invoke API (``POST
/2015-03-31/functions/{name}/invocations``, so boto3's ``lambda`` client works with
``endpoint_url``), plus ``GET /health`` and ``GET /metrics``; it registers with the
registry and prints ``LISTENING host:port`` once it serves.

One asyncio loop (uvloop) with payfn's httptools server forwards invocations over
Unix socketpairs to warm worker processes, so no thread or process is created per
request. Lambda's semantics live in ``pool``/``environment``, ``invoker`` and
``worker``; answers, timeouts, crashes and MemorySize follow Lambda.

Command line, knobs, design and metrics: docs/RUNTIME.md#infraruntimehost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import ipaddress
import logging
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson
import prometheus_client
import uvloop
from payfn_shared.platform.config import ConfigError, Settings, load_dataclass, load_settings
from payfn_shared.platform.registry import InstanceInfo, RegistryClient, RegistryLease

from infra.net.invoke import INVOKE_TOKEN_HEADER
from infra.net.limits import load_limits
from infra.net.messages import Refusal, Request, Response, json_refusal
from infra.net.server import HttpServer
from infra.net.serving import announce, serve_until_signal
from infra.runtime.collectors import HostCollectors, build_collectors
from infra.runtime.config import HostConfig
from infra.runtime.functions import (
    ACCOUNT_ID,
    REGION,
    FunctionConfigError,
    FunctionDefinition,
    load_definitions,
    template_parameters,
)
from infra.runtime.invoker import FunctionHost, Invocation, Throttle, new_request_id
from infra.runtime.logs import VERSION
from infra.runtime.metrics import RuntimeMetrics, new_multiprocess_dir
from infra.sam.template import TEMPLATE_PATH, TemplateError, load_template

log = logging.getLogger("payfn.runtime")

INVOKE_PREFIX = "/2015-03-31/functions/"
INVOKE_SUFFIX = "/invocations"
MAX_SYNC_PAYLOAD = 6 * 1024 * 1024
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def reply(status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
          content_type: str = "application/json") -> Response:
    """An answer of the host: Lambda's Invoke API always says what its body is (JSON)."""
    return Response(status, body, [("Content-Type", content_type), *(headers or ())])


def aws_error(status: int, error_type: str, body: dict[str, Any]) -> Response:
    """An Invoke API error as Lambda sends it (type in ``x-amzn-ErrorType``, botocore reads it there)."""
    return reply(status, orjson.dumps(body), [("x-amzn-ErrorType", error_type),
                                              ("x-amzn-RequestId", new_request_id())])


def refuse(refusal: Refusal) -> Response:
    """Lambda's answer to a synchronous payload over 6 MB; the server's own for other refusals."""
    if refusal.status != 413:
        return json_refusal(refusal)
    return aws_error(413, "RequestTooLargeException", {
        "Type": "User",
        "message": f"Request must be smaller than {MAX_SYNC_PAYLOAD} bytes for the InvokeFunction operation"})


def api_route(event: Any) -> tuple[str, str] | None:
    """(method, template route) of an API Gateway proxy event; None for any other event.

    REST (v1) events carry the route in ``resource`` and the method in ``httpMethod``;
    HTTP API (v2) events carry ``routeKey`` (``"POST /payments/authorize"``, or
    ``"$default"``), whose method may be ``ANY``: the request's own method is in
    ``requestContext.http.method``.
    """
    if not isinstance(event, dict):
        return None
    route_key = event.get("routeKey")
    if isinstance(route_key, str):
        context = event.get("requestContext")
        http = context.get("http") if isinstance(context, dict) else None
        method = http.get("method") if isinstance(http, dict) else None
        declared, _, path = route_key.partition(" ")
        return str(method or declared), path or route_key
    method = event.get("httpMethod")
    resource = event.get("resource")
    if isinstance(method, str) and isinstance(resource, str):
        return method, resource
    return None


def client_status(result: Invocation) -> int:
    """The status API Gateway answers for an invocation of a proxy integration."""
    if result.function_error:
        return 504 if result.timed_out else 502
    # A result without a statusCode is a malformed proxy response: API Gateway answers 502.
    return result.status_code or 502


class InvokeApi:
    """Routes of the host's HTTP server.

    With a ``token`` (the stack's ``PAYFN_INVOKE_TOKEN``) an invocation must carry it in
    ``X-Payfn-Invoke-Token`` (403 without): the gateway, the scheduler and the event-source
    poller send it, so no other local process can run the stack's functions. Reads
    (``/health``, ``/metrics``) stay open for Prometheus and supervisors.
    """

    def __init__(self, host: FunctionHost, metrics: RuntimeMetrics, service: str | None,
                 token: str = "") -> None:
        self.host = host
        self.metrics = metrics
        self.service = service
        self._token = token.encode()
        self._scrape = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrape")

    def close(self) -> None:
        self._scrape.shutdown(wait=False, cancel_futures=True)

    async def handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith(INVOKE_PREFIX) and path.endswith(INVOKE_SUFFIX):
            if request.method != "POST":
                return reply(405, b'{"message": "method not allowed"}')
            if self._token and not hmac.compare_digest(
                    request.header(INVOKE_TOKEN_HEADER).encode("latin-1"), self._token):
                return aws_error(403, "AccessDeniedException", {
                    "Type": "User", "message": f"this Invoke API needs the stack's {INVOKE_TOKEN_HEADER}"})
            return await self.invoke(request, path[len(INVOKE_PREFIX):-len(INVOKE_SUFFIX)])
        if request.method == "GET" and path == "/health":
            return self.health()
        if request.method == "GET" and path == "/metrics":
            text = await asyncio.get_running_loop().run_in_executor(self._scrape, self.metrics.render)
            return reply(200, text, content_type=METRICS_CONTENT_TYPE)
        return reply(404, b'{"message": "not found"}')

    def health(self) -> Response:
        functions = {
            logical_id: {"environments": hosted.pool.environments, "busy": hosted.pool.in_use,
                         "limit": hosted.pool.limit}
            for logical_id, hosted in self.host.functions.items()
        }
        return reply(200, orjson.dumps({"status": "UP", "service": self.service, "functions": functions}))

    async def invoke(self, request: Request, raw_name: str) -> Response:
        name = unquote(raw_name)
        qualifier = parse_qs(request.query).get("Qualifier", [""])[0] if request.query else ""
        hosted = self.host.resolve(f"{name}:{qualifier}" if qualifier else name)
        if hosted is None:
            arn = name if name.startswith("arn:") else f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"
            return aws_error(404, "ResourceNotFoundException",
                             {"Type": "User", "Message": f"Function not found: {arn}"})
        invocation_type = request.header("x-amz-invocation-type", "RequestResponse")
        if invocation_type not in ("RequestResponse", "Event", "DryRun"):
            return aws_error(400, "InvalidParameterValueException", {
                "Type": "User", "message": f"Unsupported invocation type {invocation_type}"})
        payload = request.body or b"{}"  # at most MAX_SYNC_PAYLOAD: the server answers larger ones
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return aws_error(400, "InvalidRequestContentException", {
                "Type": "User", "message": f"Could not parse request body into json: {exc}"})
        client_context = None
        encoded_context = request.header("x-amz-client-context")
        if encoded_context:
            try:
                client_context = orjson.loads(base64.b64decode(encoded_context, validate=True))
            except (binascii.Error, orjson.JSONDecodeError):
                return aws_error(400, "InvalidRequestContentException", {
                    "Type": "User", "message": "Client context must be a valid Base64-encoded JSON object."})
        if invocation_type == "DryRun":
            return reply(204, headers=[("x-amzn-RequestId", new_request_id())])
        if invocation_type == "Event":
            request_id = self.host.invoke_async(hosted, payload, client_context)
            return reply(202, headers=[("x-amzn-RequestId", request_id)])
        route = api_route(event)
        started = time.perf_counter()
        try:
            result = await self.host.invoke(hosted, payload, client_context,
                                            queue_wait=self.host.config.runtime_queue_wait_ms / 1000,
                                            tail=request.header("x-amz-log-type") == "Tail")
        except Throttle as throttle:
            if route is not None:
                hosted.http.observe(route[0], route[1], 429, time.perf_counter() - started)
            reason = ("ReservedFunctionConcurrentInvocationLimitExceeded" if throttle.reserved
                      else "ConcurrentInvocationLimitExceeded")
            response = aws_error(429, "TooManyRequestsException",
                                 {"Reason": reason, "Type": "User", "message": "Rate Exceeded."})
            response.headers.append(("Retry-After", "1"))
            return response
        except OSError as exc:
            log.error("%s: cannot start an environment: %s", hosted.definition.logical_id, exc)
            if route is not None:
                hosted.http.observe(route[0], route[1], 502, time.perf_counter() - started)
            return aws_error(500, "ServiceException", {"Type": "Service", "message": str(exc)})
        if route is not None:
            hosted.http.observe(route[0], route[1], client_status(result), time.perf_counter() - started)
        headers = [("X-Amz-Executed-Version", VERSION), ("x-amzn-RequestId", result.request_id)]
        if result.function_error:
            headers.append(("X-Amz-Function-Error", result.function_error))
        if result.log_result is not None:
            headers.append(("X-Amz-Log-Result", result.log_result))
        return reply(200, result.body, headers)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra.runtime.host",
                                     description="Run a service's functions with Lambda's contract.")
    parser.add_argument("--service",
                        help="run the functions tagged payfn:service=SERVICE; also the registry app")
    parser.add_argument("--functions", default="", help="comma-separated logical ids to run as well")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="bind port; 0 = ephemeral (default)")
    parser.add_argument("--port-file", type=Path, help="write host:port here once listening")
    parser.add_argument("--advertise-host", help="address registered in the registry (default: bind address)")
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH,
                        help="SAM template (default template.yaml)")
    parser.add_argument("--registry-url", help="registry base URL (default: from settings)")
    parser.add_argument("--no-register", action="store_true", help="do not register with the registry")
    args = parser.parse_args(argv)
    if not args.service and not args.functions:
        parser.error("give --service and/or --functions")
    return args


def advertised_host(bind: str) -> str:
    """The address others should use: a wildcard bind (all interfaces) is reached via loopback."""
    try:
        unspecified = ipaddress.ip_address(bind).is_unspecified
    except ValueError:
        unspecified = bind == ""
    return "127.0.0.1" if unspecified else bind


async def serve(args: argparse.Namespace, config: HostConfig) -> int:
    settings = load_settings()
    template_path = args.template.resolve()
    template = load_template(template_path, template_parameters(settings))
    names = [name.strip() for name in args.functions.split(",") if name.strip()]
    definitions = load_definitions(template, template_path.parent, args.service, names)
    if not definitions:
        log.error("no functions to run for service=%s functions=%s", args.service, args.functions)
        return 2
    collectors = build_collectors(definitions)
    metrics_dir = new_multiprocess_dir()
    try:
        return await _serve(args, settings, config, definitions, collectors, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _serve(args: argparse.Namespace, settings: Settings, config: HostConfig,
                 definitions: list[FunctionDefinition], collectors: HostCollectors | None,
                 metrics_dir: Path) -> int:
    metrics = RuntimeMetrics(metrics_dir)
    if collectors is not None:
        metrics.add_collector(collectors)
    host = FunctionHost(definitions, config, metrics)
    await host.start()
    api = InvokeApi(host, metrics, args.service, settings.invoke_token)
    server = HttpServer(api.handle, load_limits(MAX_SYNC_PAYLOAD), refuse)
    port = await server.start(args.host, args.port, backlog=2048)
    announce(args.host, port, args.port_file)
    log.info("serving %s on %s:%d", ", ".join(host.functions), args.host, port)

    lease = None
    if args.service and not args.no_register:
        advertise = args.advertise_host or advertised_host(args.host)
        instance = InstanceInfo(
            app=args.service, instance_id=f"{socket.gethostname()}:{args.service}:{port}", host=advertise,
            port=port, status="UP", metadata={
                "functions": ",".join(host.functions), "metricsPath": "/metrics",
                "application": args.service.lower(),
                "invokePath": INVOKE_PREFIX.rstrip("/"),
            })
        lease = RegistryLease(RegistryClient(args.registry_url or settings.registry_url,
                                             credentials=settings.registry_credentials), instance,
                              config.registry_renew_seconds)
        lease.start()

    async def close() -> None:
        await server.close()
        await host.close()
        api.close()

    await serve_until_signal(lease, close, log)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    prometheus_client.disable_created_metrics()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config: HostConfig = load_dataclass(HostConfig)
        logging.getLogger().setLevel(config.runtime_log_level)
        code = uvloop.run(serve(args, config))
    except (TemplateError, FunctionConfigError, ConfigError) as exc:
        log.error("%s", exc)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
