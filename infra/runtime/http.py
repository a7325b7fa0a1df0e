"""A small HTTP/1.1 server on asyncio + httptools, made for one hot route.

The host's hot path is ``POST /2015-03-31/functions/{name}/invocations`` from the
gateway at thousands of requests per second over keep-alive connections. A general
framework costs more per request than the invocation itself, so this server does
only what that needs: httptools parses, each connection answers its requests in
order (pipelining-safe), one asyncio task per request, no thread, and responses are
written with a single ``transport.write``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

log = logging.getLogger("payfn.runtime.http")

MAX_BODY = 8 * 1024 * 1024
MAX_PIPELINED = 32


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Response]]

_REASONS = {status.value: status.phrase for status in HTTPStatus}


def render(response: Response, keep_alive: bool) -> bytes:
    """Status line, headers and body in one buffer."""
    lines = [
        f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, handler: Handler, connections: set[HttpProtocol]) -> None:
        self.handler = handler
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[tuple[Request, bool]] = deque()
        self.busy = False
        self.paused = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, b'{"message": "protocol upgrade is not supported"}')
        except httptools.HttpParserError:
            self._reject(400, b'{"message": "malformed HTTP request"}')

    def _reject(self, status: int, body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(render(Response(status, body), keep_alive=False))
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # curl and some SDKs wait (up to a second) for this before sending a large body.
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY:
            self._reject(413, b'{"message": "request body too large"}')
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        url = httptools.parse_url(self._url)
        request = Request(
            method=self.parser.get_method().decode("ascii"),
            path=url.path.decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
        )
        self.queue.append((request, self.parser.should_keep_alive()))
        if len(self.queue) > MAX_PIPELINED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        """Answer queued requests in order, then go idle."""
        while self.queue:
            request, keep_alive = self.queue.popleft()
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("unhandled error serving %s %s", request.method, request.path)
                response = Response(500, b'{"message": "internal error"}')
            transport = self.transport
            if transport is None or transport.is_closing():
                break
            transport.write(render(response, keep_alive))
            if not keep_alive:
                transport.close()
                break
            if self.paused and len(self.queue) <= MAX_PIPELINED // 2:
                self.paused = False
                transport.resume_reading()
        self.busy = False
