"""The gateway's HTTP/1.1 server: asyncio protocol + httptools, keep-alive, in-order answers.

Written for the edge's load (thousands of small requests per second over
keep-alive connections on two cores): httptools parses, each connection answers
its requests in arrival order (so pipelining is safe), a response is one
``transport.write``, and the body limit is enforced from ``Content-Length``
before any body byte is buffered, so an oversized upload costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

from gateway.events import IncomingRequest

log = logging.getLogger("payfn.gateway.http")

MAX_QUEUED = 64
_REASONS = {status.value: status.phrase for status in HTTPStatus}


@dataclass(slots=True)
class OutgoingResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[IncomingRequest], Awaitable[OutgoingResponse]]
TooLarge = Callable[[IncomingRequest], OutgoingResponse]


def render(response: OutgoingResponse, keep_alive: bool, head_only: bool = False) -> bytes:
    """Status line, headers (Content-Length computed here, never taken from a function) and body."""
    parts = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}\r\n"]
    parts.extend(f"{name}: {value}\r\n" for name, value in response.headers)
    parts.append(f"Content-Length: {len(response.body)}\r\n")
    if not keep_alive:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    head = "".join(parts).encode("latin-1", "replace")
    return head if head_only else head + response.body


_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def clean_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop framing headers a function may return: the gateway frames the response itself."""
    return [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP and "\n" not in v and "\r" not in v]


class _BodyTooLarge(Exception):
    """Raised inside a parser callback to stop parsing an oversized request."""


class GatewayProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, handler: Handler, too_large: TooLarge, max_body: int,
                 connections: set[GatewayProtocol]) -> None:
        self.handler = handler
        self.too_large = too_large
        self.max_body = max_body
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.local_port = 0
        self.queue: deque[tuple[IncomingRequest | OutgoingResponse, bool]] = deque()
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
            self._reject(OutgoingResponse(400, b'{"message":"protocol upgrade is not supported"}',
                                          [("Content-Type", "application/json")]))
        except httptools.HttpParserError:
            if not self.rejected:
                self._reject(OutgoingResponse(400, b'{"message":"malformed HTTP request"}',
                                              [("Content-Type", "application/json")]))

    def _reject(self, response: OutgoingResponse) -> None:
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

    def _request(self, body: bytes) -> IncomingRequest:
        url = httptools.parse_url(self._url)
        version = self.parser.get_http_version()
        return IncomingRequest(
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
            # curl sends bodies over 1 KiB only after this (or after waiting a second for it).
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
            if isinstance(request, OutgoingResponse):
                if self.transport is not None:
                    self.transport.write(render(request, keep_alive=False))
                    self.transport.close()
                break
            try:
                response = await self.handler(request)
            except Exception:
                log.exception("unhandled error serving %s %s", request.method, request.path)
                response = OutgoingResponse(500, b'{"message":"Internal server error"}',
                                            [("Content-Type", "application/json")])
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
