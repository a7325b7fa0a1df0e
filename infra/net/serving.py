"""What the platform's background processes (scheduler, event-source poller) share.

They are not function hosts but must be seen like them: a ``/metrics`` endpoint
Prometheus scrapes and a ``/health`` endpoint a supervisor polls, and a registry
lease (Eureka stand-in) so Prometheus' ``eureka_sd_configs`` finds them. Both run
in daemon threads so the process's own work loop stays plain blocking code (the
lease is the shared ``payfn_shared.platform.registry.RegistryLease``). ``background_main`` is
their whole main; each process only builds its work.

The asyncio servers (gateway, function hosts) share the end of their main instead:
``serve_until_signal``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import prometheus_client
from payfn_shared.platform.config import ConfigError, Settings, load_settings
from payfn_shared.platform.registry import InstanceInfo, RegistryClient, RegistryLease
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from infra.net.limits import load_limits
from infra.net.messages import Request, Response
from infra.net.server import HttpServer, ThreadedServer, blocking
from infra.sam.template import TEMPLATE_PATH, TemplateError

log = logging.getLogger("payfn.serving")
JSON = ("Content-Type", "application/json")
#: The status endpoints take no body.
STATUS_MAX_BODY_BYTES = 1024


def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options every background process shares (status endpoint, registry)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address of /metrics and /health")
    parser.add_argument("--port", type=int, default=0, help="port of /metrics and /health; 0 = ephemeral")
    parser.add_argument("--port-file", type=Path, help="write host:port here once listening")
    parser.add_argument("--registry-url", help="registry base URL (default: from settings)")
    parser.add_argument("--no-register", action="store_true", help="do not register with the registry")


def function_ids(value: str) -> frozenset[str]:
    """``--functions A,B``: the logical ids named (empty: all of them)."""
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def background_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options of a background process that runs part of the template (and serves its status)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    parser.add_argument("--functions", type=function_ids, default=frozenset(),
                        help="only these logical ids (comma-separated)")
    add_serving_arguments(parser)
    return parser


class StatusServer:
    """``GET /metrics`` (Prometheus text of ``registry``) and ``GET /health`` (JSON of ``health()``).

    Served by the one HTTP server on a thread of its own (:class:`ThreadedServer`), so the
    process's blocking main loop and the scrapes never wait for each other.
    """

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Callable[[], dict[str, Any]]) -> None:
        self._registry = registry
        self._health = health
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="status")
        server = HttpServer(blocking(self._handle, self._executor), load_limits(STATUS_MAX_BODY_BYTES))
        self._server = ThreadedServer(server, host, port)

    def _handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, b'{"message": "method not allowed"}', [JSON])
        if request.path == "/metrics":
            return Response(200, generate_latest(self._registry), [("Content-Type", CONTENT_TYPE_LATEST)])
        if request.path == "/health":
            return Response(200, json.dumps(self._health()).encode(), [JSON])
        return Response(404, b'{"message": "not found"}', [JSON])

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
        self._executor.shutdown(wait=False)


@dataclass(frozen=True)
class BackgroundWork:
    """What a background process runs: started once serving, stopped on SIGTERM/SIGINT.

    ``metrics`` and ``health`` feed the status endpoint; ``instance_name`` and
    ``metadata`` go into the registry lease (see :func:`instance_for`).
    """

    metrics: CollectorRegistry
    health: Callable[[], dict[str, Any]]
    start: Callable[[], None]
    stop: Callable[[], None]
    instance_name: str
    metadata: dict[str, str] = field(default_factory=dict)


#: Builds the work from the parsed arguments, the settings and the registry client.
WorkBuilder = Callable[[argparse.Namespace, Settings, RegistryClient], BackgroundWork]


def background_main(parser: argparse.ArgumentParser, app: str, build: WorkBuilder,
                    argv: list[str] | None = None,
                    startup_errors: tuple[type[Exception], ...] = (ConfigError, TemplateError)) -> int:
    """Parse, log to stderr, build the work, serve its status, register as ``app``, run until a signal.

    Exit codes: 0 after a clean stop, 2 when ``build`` raised one of ``startup_errors``
    (a bad template or setting; logged). On a signal the work stops first, then the
    lease is cancelled, then the status endpoint closes.
    """
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prometheus_client.disable_created_metrics()
    settings = load_settings()
    registry = RegistryClient(args.registry_url or settings.registry_url,
                              credentials=settings.registry_credentials)
    try:
        work = build(args, settings, registry)
    except startup_errors as exc:
        log.error("%s", exc)
        return 2
    server = StatusServer(args.host, args.port, work.metrics, work.health)
    server.start()
    announce(args.host, server.port, args.port_file)
    lease = None
    if not args.no_register:
        lease = RegistryLease(registry, instance_for(app, args.host, server.port, work.instance_name,
                                                     work.metadata))
        lease.start()
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    work.start()
    stopped.wait()
    log.info("stopping")
    work.stop()
    if lease is not None:
        lease.stop()
    server.stop()
    return 0


def announce(host: str, port: int, port_file: Path | None) -> None:
    """Print ``LISTENING host:port`` and write it to ``port_file`` atomically (what supervisors read)."""
    address = f"{host}:{port}"
    if port_file is not None:
        tmp = port_file.with_name(f".{port_file.name}.{os.getpid()}")
        tmp.write_text(address + "\n", encoding="utf-8")
        tmp.replace(port_file)
    print(f"LISTENING {address}", flush=True)


def instance_for(app: str, host: str, port: int, name: str, metadata: dict[str, str]) -> InstanceInfo:
    """An UP instance whose id is stable per host, app and ``name`` (e.g. the poller's --instance)."""
    return InstanceInfo(app=app, instance_id=f"{socket.gethostname()}:{app.lower()}:{name}", host=host,
                        port=port, status="UP", metadata={"metricsPath": "/metrics", **metadata})


async def serve_until_signal(lease: RegistryLease | None, close: Callable[[], Awaitable[None]],
                             logger: logging.Logger) -> None:
    """The tail of an asyncio server's main: wait for SIGTERM/SIGINT, deregister, then ``close()``.

    The lease is cancelled *before* the server closes: the registry drops the instance
    while it still answers, so whoever discovers it there (the gateway's service
    directory, Prometheus) stops sending to it instead of meeting a closed port until
    the lease would have expired. ``lease`` is None when the process did not
    register (``--no-register``); ``close`` stops the server (what differs per server);
    ``logger`` is the caller's, which logs ``stopping`` once a signal arrived. Must run
    in the main thread (signal handlers); they stay installed, so a second signal
    during shutdown changes nothing.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    logger.info("stopping")
    if lease is not None:
        await asyncio.to_thread(lease.stop)
    await close()
