"""ServiceInvoker over the shared discovery: a refusing instance is quarantined, the next one answers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from payfn_shared.platform.registry import InstanceInfo, RegistryClient

from infra.net.invoke import InvokeUnavailable, ServiceInvoker
from infra.stack.process import free_port

APP = "INGEST-SERVICE"


class Answer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def live_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def invoker(*ports: int) -> ServiceInvoker:
    subject = ServiceInvoker(RegistryClient("http://127.0.0.1:1/eureka"), APP, refresh_seconds=60.0)
    subject.discovery.probe_interval = 60.0
    subject.discovery.install({APP: [InstanceInfo(APP, f"i-{p}", "127.0.0.1", p) for p in ports]})
    return subject


def test_a_refusing_instance_is_quarantined_and_skipped(live_port: int) -> None:
    dead = free_port()
    subject = invoker(dead, live_port)  # the registry is unreachable: the installed copy is kept
    results = [subject.invoke("fn", {}, timeout=5).status for _ in range(3)]
    assert results == [200, 200, 200]
    assert subject.discovery.quarantined() == [f"i-{dead}"]
    subject.discovery.close()


def test_nothing_usable_is_invoke_unavailable() -> None:
    dead = free_port()
    subject = invoker(dead)
    with pytest.raises(InvokeUnavailable, match="answered"):
        subject.invoke("fn", {}, timeout=1)
    with pytest.raises(InvokeUnavailable, match="quarantined"):
        subject.invoke("fn", {}, timeout=1)
    subject.discovery.close()
