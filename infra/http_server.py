"""payfn's HTTP/1.1 server (asyncio + httptools), shared by the gateway and the function hosts.

Both hot paths are the same shape: thousands of small requests per second over
keep-alive connections on two cores (clients → gateway, gateway → Invoke API of a
host), where a general framework costs more per request than the work behind it.
So this server does only that: httptools parses, each connection answers its
requests in arrival order (pipelining is safe), a response is one
``transport.write``, and the body limit is enforced from ``Content-Length`` before
any body byte is buffered, so an oversized upload costs nothing.

It lives in ``infra`` (not in the gateway or the runtime) so that both import the
same code without one importing the other's internals; the Lambda layer
(``payfn_shared``) is for function code and does not ship a server.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

log = logging.getLogger("payfn.http")

#: Requests a connection may have parsed but not answered yet before reading pauses.
MAX_QUEUED = 64
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_JSON = ("Content-Type", "application/json")


@dataclass(slots=True)
class Request:
    """What the server received, headers in arrival order with their original case.

    The gateway forwards headers as they came (API Gateway events keep their case
    and repeats); ``by_name`` indexes the first value of each header by lower-case
    name, since a request's headers are looked up about ten times on the way.
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str = ""
    protocol: str = "HTTP/1.1"
    server_port: int = 0
    by_name: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.headers:
            self.by_name.setdefault(name.lower(), value)

    def header(self, name: str, default: str = "") -> str:
        """First value of a header; ``name`` must be lower case."""
        return self.by_name.get(name, default)

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))
        self.by_name.setdefault(name.lower(), value)

    def replace_header(self, name: str, value: str) -> None:
        """Drop every value of ``name`` and set this one."""
        lowered = name.lower()
        self.headers = [(n, v) for n, v in self.headers if n.lower() != lowered]
        self.headers.append((name, value))
        self.by_name[lowered] = value


@dataclass(slots=True)
class Response:
    """An answer; ``Content-Length`` (and ``Connection: close``) are added when it is written."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]
TooLarge = Callable[[Request], Response]


def render(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    """Status line, headers (Content-Length computed here, never taken from a handler) and body."""
    parts = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}\r\n"]
    parts.extend(f"{name}: {value}\r\n" for name, value in response.headers)
    parts.append(f"Content-Length: {len(response.body)}\r\n")
    if not keep_alive:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    head = "".join(parts).encode("latin-1", "replace")
    return head if head_only else head + response.body


def payload_too_large(request: Request) -> Response:
    """The default answer to an oversized body (a server may pass its own, e.g. to log it)."""
    return Response(413, b'{"message":"request body too large"}', [_JSON])


class _BodyTooLarge(Exception):
    """Raised inside a parser callback to stop parsing an oversized request."""


class HttpProtocol(asyncio.Protocol):
    """One client connection.

    ``handler`` answers each request; ``connections`` tracks open connections so the
    owner can close them on shutdown; a body over ``max_body`` bytes is answered with
    ``too_large(request)`` (headers only) and the connection closed.
    """

    def __init__(self, handler: Handler, connections: set[HttpProtocol], max_body: int,
                 too_large: TooLarge = payload_too_large) -> None:
        self.handler = handler
        self.too_large = too_large
        self.max_body = max_body
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.local_port = 0
        self.queue: deque[tuple[Request | Response, bool]] = deque()
        self.busy = False
        self.paused = False
        self.rejected = False
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        local = transport.get_extra_info("sockname")
        self.local_port = int(local[1]) if local else 0
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.rejected:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(Response(400, b'{"message":"protocol upgrade is not supported"}', [_JSON]))
        except httptools.HttpParserError:
            if not self.rejected:
                self._reject(Response(400, b'{"message":"malformed HTTP request"}', [_JSON]))

    def _reject(self, response: Response) -> None:
        """Answer after the requests already queued, then close: the rest of the stream is unwanted."""
        self.rejected = True
        self.queue.append((response, False))
        if self.transport is not None:
            self.transport.pause_reading()
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def _request(self, body: bytes) -> Request:
        url = httptools.parse_url(self._url)
        version = self.parser.get_http_version()
        return Request(
            method=self.parser.get_method().decode("ascii"),
            path=url.path.decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            body=body,
            source_ip=self.peer,
            protocol=f"HTTP/{version}",
            server_port=self.local_port,
        )

    def on_headers_complete(self) -> None:
        expect_continue = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == "content-length" and value.isdigit() and int(value) > self.max_body:
                self._refuse_too_large()
                return
            if lowered == "expect" and value.lower() == "100-continue":
                expect_continue = True
        if expect_continue and self.transport is not None:
            # curl and some SDKs send a body over 1 KiB only after this (or after waiting a second).
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body:
            self._refuse_too_large()
            return
        self._body.append(body)

    def _refuse_too_large(self) -> None:
        if self.rejected:
            return
        self._reject(self.too_large(self._request(b"")))
        raise _BodyTooLarge

    def on_message_complete(self) -> None:
        if self.transport is None or self.transport.is_closing() or self.rejected:
            return
        request = self._request(b"".join(self._body))
        self.queue.append((request, self.parser.should_keep_alive()))
        if len(self.queue) > MAX_QUEUED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        """Answer queued requests in order, then go idle."""
        while self.queue:
            request, keep_alive = self.queue.popleft()
            if isinstance(request, Response):
                if self.transport is not None:
                    self.transport.write(render(request, keep_alive=False))
                    self.transport.close()
                break
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("unhandled error serving %s %s", request.method, request.path)
                response = Response(500, b'{"message":"Internal server error"}', [_JSON])
            transport = self.transport
            if transport is None or transport.is_closing():
                break
            transport.write(render(response, keep_alive, head_only=request.method == "HEAD"))
            if not keep_alive:
                transport.close()
                break
            if self.paused and len(self.queue) <= MAX_QUEUED // 2:
                self.paused = False
                transport.resume_reading()
        self.busy = False
