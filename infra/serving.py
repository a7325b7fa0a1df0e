"""What the platform's background processes (scheduler, event-source poller) share.

They are not function hosts but must be seen like them: a ``/metrics`` endpoint
Prometheus scrapes and a ``/health`` endpoint a supervisor polls, and a registry
lease (Eureka stand-in) so Prometheus' ``eureka_sd_configs`` finds them. Both run
in daemon threads so the process's own work loop stays plain blocking code (the
lease is the shared ``payfn_shared.registry.RegistryLease``).

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
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from payfn_shared.registry import InstanceInfo, RegistryLease
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from infra.net.server import HttpServer, Request, Response, ThreadedServer, blocking, load_limits

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
