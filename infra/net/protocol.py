"""One client connection of :class:`~infra.net.server.HttpServer`: framing, bounds, answers in order.

The request head is framed here before httptools sees it (request line checked
strictly, size bounded: 414/431), bodies are bounded from Content-Length or while
chunks arrive (413), a request that stalls is answered 408, and a refused connection
is closed only after its unread input has been drained for a moment, so the client
reads the answer instead of a reset. Requests on a connection are answered in
arrival order; a response is one write.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from infra.net.messages import JSON_HEADER, Refusal, Request, Response, render

if TYPE_CHECKING:
    from infra.net.server import HttpServer

log = logging.getLogger("payfn.http")

#: RFC 9112 request-line: method SP request-target SP HTTP-version, single spaces, HTTP/1.x only.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e\x80-\xff]+ HTTP/1\.[01]")
_HEAD, _BODY, _CHUNKED, _DISCARD = range(4)


class _Refused(Exception):
    """Raised inside a parser callback once the request has been refused: stop parsing."""


class HttpProtocol(asyncio.Protocol):
    """One client connection of an :class:`~infra.net.server.HttpServer`."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.local_port = 0
        self.queue: deque[tuple[Request | Response, bool]] = deque()
        self.busy = False
        self.paused = False
        self.rejected = False
        self._state = _HEAD
        self._head = bytearray()
        self._remaining = 0
        self._timer: asyncio.TimerHandle | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._length = 0
        self._chunked = False

    # --- asyncio callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        local = transport.get_extra_info("sockname")
        self.local_port = int(local[1]) if local else 0
        self.server.connections.add(self)
        self._arm(self.limits.idle_timeout, self._idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._disarm()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.rejected:
            return  # lingering after a refusal: the rest of the stream is read and dropped
        try:
            self._feed(data)
        except _Refused:
            pass
        except httptools.HttpParserUpgrade:
            self._refuse(400, "MALFORMED_REQUEST", "protocol upgrade is not supported")
        except httptools.HttpParserError as exc:
            if not self.rejected:
                self._refuse(400, "MALFORMED_REQUEST", f"malformed HTTP request: {exc}")

    # --- framing -------------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Frame requests: heads are cut here (so each is checked and bounded), bodies by length."""
        while data and not self.rejected:
            if self._state == _HEAD:
                if not self._head:  # a request begins: it has request_timeout to arrive whole
                    self._arm(self.limits.request_timeout, self._stalled)
                searched = max(len(self._head) - 3, 0)
                self._head += data
                end = self._head.find(b"\r\n\r\n", searched)
                if end < 0:
                    self._check_partial_head()
                    return
                head, data = bytes(self._head[:end + 4]), bytes(self._head[end + 4:])
                self._head.clear()
                self._check_head(head)
                self.parser.feed_data(head)
            elif self._state == _BODY:
                piece, data = data[:self._remaining], data[self._remaining:]
                self._remaining -= len(piece)
                self.parser.feed_data(piece)
                if self._state == _BODY and not self._remaining:  # the parser disagrees on the length
                    self._refuse(400, "MALFORMED_REQUEST", "malformed HTTP request body")
                    return
            elif self._state == _CHUNKED:
                self.parser.feed_data(data)
                return
            else:
                return

    def _check_partial_head(self) -> None:
        if b"\r\n" not in self._head.lstrip(b"\r\n") and len(self._head) > self.limits.max_line_bytes:
            self._refuse_line_too_long()
        elif len(self._head) > self.limits.max_head_bytes:
            self._refuse_head_too_large()

    def _check_head(self, head: bytes) -> None:
        line = head.lstrip(b"\r\n").split(b"\r\n", 1)[0]
        if len(line) > self.limits.max_line_bytes:
            self._refuse_line_too_long()
        elif len(head) > self.limits.max_head_bytes:
            self._refuse_head_too_large()
        elif _REQUEST_LINE.fullmatch(line) is None:
            self._refuse(400, "MALFORMED_REQUEST",
                         "the request line must be 'METHOD target HTTP/1.x', separated by single spaces")
        if self.rejected:
            raise _Refused

    def _refuse_line_too_long(self) -> None:
        self._refuse(414, "URI_TOO_LONG", f"request line exceeds {self.limits.max_line_bytes} bytes")

    def _refuse_head_too_large(self) -> None:
        self._refuse(431, "HEADERS_TOO_LARGE", f"request headers exceed {self.limits.max_head_bytes} bytes")

    # --- httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0
        self._length = 0
        self._chunked = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length":
            self._length = int(value)  # llhttp has checked it is digits, once
        elif lowered == b"transfer-encoding":
            self._chunked = True  # llhttp accepts a request's Transfer-Encoding only when it ends in chunked
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self._state == _DISCARD:
            return
        if self._length > self.limits.max_body_bytes:
            self._refuse_too_large()
        if self._chunked:
            self._state = _CHUNKED
        elif self._length:
            self._state, self._remaining = _BODY, self._length
        expect = next((v for n, v in self._headers if n.lower() == "expect"), "")
        if expect.lower() == "100-continue" and self.transport is not None and self._state != _HEAD:
            # curl and some SDKs send a body over 1 KiB only after this (or after waiting a second).
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._state == _DISCARD:
            return
        self._size += len(body)
        if self._size > self.limits.max_body_bytes:
            self._refuse_too_large()
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._state == _DISCARD or self.transport is None or self.transport.is_closing():
            return
        # A chunked body's end is known only to the parser: what follows it on the connection
        # cannot be framed here, so the connection closes after this answer.
        keep_alive = self.parser.should_keep_alive() and not self._chunked
        self._state = _DISCARD if self._chunked else _HEAD
        self._disarm()
        request = self._request(b"".join(self._body))
        self.queue.append((request, keep_alive))
        if len(self.queue) > self.limits.max_queued and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._start_serving()

    def _request(self, body: bytes) -> Request:
        url = httptools.parse_url(self._url)
        return Request(
            method=self.parser.get_method().decode("ascii"),
            path=url.path.decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            headers=self._headers,
            body=body,
            source_ip=self.peer,
            protocol=f"HTTP/{self.parser.get_http_version()}",
            server_port=self.local_port,
        )

    # --- refusals and timers -------------------------------------------------------------------------

    def _refuse_too_large(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        path = httptools.parse_url(self._url).path.decode("latin-1") if self._url else ""
        self._refuse(413, "PAYLOAD_TOO_LARGE", f"request body exceeds {self.limits.max_body_bytes} bytes",
                     method, path)
        raise _Refused

    def _refuse(self, status: int, code: str, message: str, method: str = "", path: str = "") -> None:
        """Answer after the requests already queued, then close: the rest of the stream is unwanted."""
        if self.rejected:
            return
        self.rejected = True
        self._disarm()
        self.queue.append((self.server.refuse(Refusal(status, code, message, method, path)), False))
        self._start_serving()

    def _stalled(self) -> None:
        self._timer = None
        self._refuse(408, "REQUEST_TIMEOUT",
                     f"the request was not received within {self.limits.request_timeout:g} s")

    def _idle(self) -> None:
        self._timer = None
        if self.transport is not None and not self.busy and not self.queue:
            self.transport.close()

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        if seconds > 0:
            self._timer = asyncio.get_running_loop().call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _linger(self, transport: asyncio.Transport, timed_out: bool) -> None:
        """After a refusal: stop writing, drain what the client still sends for a moment, then close.

        Closing a socket with unread input makes the kernel send a reset, and a client
        still uploading would then lose the answer it was sent. A stalled client (408)
        sends nothing more, so its connection closes at once.
        """
        if timed_out or self.limits.linger_seconds <= 0 or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        self._arm(self.limits.linger_seconds, transport.close)

    # --- answering -----------------------------------------------------------------------------------

    def _start_serving(self) -> None:
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        """Answer queued requests in order, then go idle."""
        while self.queue:
            request, keep_alive = self.queue.popleft()
            transport = self.transport
            if isinstance(request, Response):
                if transport is not None and not transport.is_closing():
                    transport.write(render(request, keep_alive=False))
                    self._linger(transport, timed_out=request.status == 408)
                break
            try:
                response = await self.server.handler(request)
            except Exception:
                log.exception("unhandled error serving %s %s", request.method, request.path)
                response = Response(500, b'{"message":"Internal server error"}', [JSON_HEADER])
            transport = self.transport
            if transport is None or transport.is_closing():
                break
            transport.write(render(response, keep_alive, head_only=request.method == "HEAD"))
            if not keep_alive:
                transport.close()
                break
            if self.paused and len(self.queue) <= self.limits.max_queued // 2:
                self.paused = False
                transport.resume_reading()
        self.busy = False
        if not self.rejected and self._state == _HEAD and not self._head and self._timer is None:
            self._arm(self.limits.idle_timeout, self._idle)
