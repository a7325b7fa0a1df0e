"""payfn's one HTTP/1.1 server (asyncio + httptools): every listener payfn runs uses it.

The gateway, the function hosts' Invoke API, the registry and the background
processes' status endpoints all answer through :class:`HttpServer`, so there is one
policy for hostile input (:class:`Limits`): the request head is framed here before
httptools sees it (request line checked strictly, size bounded: 414/431), bodies are
bounded from Content-Length or while chunks arrive (413), a request that stalls is
answered 408, and a refused connection is closed only after its unread input has been
drained for a moment, so the client reads the answer instead of a reset.
Requests on a connection are answered in arrival order; a response is one write.
Against uvicorn (httptools + uvloop) on a trivial 200 (``tests/load/bench_pieces.py``, wrk, 2 cores):
18–31k vs 13–20k req/s, 21–26 vs 27–30 server CPU µs per request; so this one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import ClassVar

import httptools
import orjson
from payfn_shared.platform.config import ConfigError, load_dataclass

log = logging.getLogger("payfn.http")

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_JSON = ("Content-Type", "application/json")
#: RFC 9112 request-line: method SP request-target SP HTTP-version, single spaces, HTTP/1.x only.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e\x80-\xff]+ HTTP/1\.[01]")
_HEAD, _BODY, _CHUNKED, _DISCARD = range(4)


@dataclass(frozen=True)
class Limits:
    """What one request may be (``PAYFN_HTTP_*``): sizes in bytes, times in seconds.

    ``max_body_bytes`` is each server's own (the gateway's, Lambda's 6 MB, …);
    ``idle_timeout`` 0 keeps an idle keep-alive connection open for ever.
    """

    ENV_PREFIX: ClassVar[str] = "PAYFN_HTTP_"

    max_body_bytes: int = 1024 * 1024
    max_head_bytes: int = 16 * 1024
    max_line_bytes: int = 8 * 1024
    request_timeout: float = 15.0
    idle_timeout: float = 75.0
    linger_seconds: float = 2.0
    max_queued: int = 64

    def validate(self) -> None:
        if min(self.max_body_bytes, self.max_head_bytes, self.max_line_bytes, self.max_queued) < 1:
            raise ConfigError("PAYFN_HTTP_MAX_* sizes must be at least 1")
        if self.max_line_bytes > self.max_head_bytes:
            raise ConfigError("PAYFN_HTTP_MAX_LINE_BYTES must not exceed PAYFN_HTTP_MAX_HEAD_BYTES")
        if self.request_timeout <= 0 or self.idle_timeout < 0 or self.linger_seconds < 0:
            raise ConfigError("PAYFN_HTTP_REQUEST_TIMEOUT must be > 0; _IDLE_TIMEOUT, _LINGER_SECONDS >= 0")


def load_limits(max_body_bytes: int) -> Limits:
    """The stack's one HTTP policy (``PAYFN_HTTP_*``) with a server's own body limit."""
    limits: Limits = load_dataclass(Limits)
    return replace(limits, max_body_bytes=max_body_bytes)


@dataclass(slots=True)
class Request:
    """What the server received, headers in arrival order with their original case.

    ``by_name`` indexes the first value of each header by lower-case name: the
    gateway looks a request's headers up about ten times on its way.
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


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the server answered a request itself (its handler never saw it)."""

    status: int
    code: str
    message: str
    #: The request's method and path when its head was read (413 after the head), else empty.
    method: str = ""
    path: str = ""


Handler = Callable[[Request], Awaitable[Response]]
Refuse = Callable[[Refusal], Response]


def json_refusal(refusal: Refusal) -> Response:
    """The default answer to a refused request: ``{"code", "message"}``."""
    return Response(refusal.status, orjson.dumps({"code": refusal.code, "message": refusal.message}), [_JSON])


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


class _Refused(Exception):
    """Raised inside a parser callback once the request has been refused: stop parsing."""


class HttpProtocol(asyncio.Protocol):
    """One client connection of an :class:`HttpServer`."""

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
                response = Response(500, b'{"message":"Internal server error"}', [_JSON])
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


class HttpServer:
    """A listening socket, its connections and the one place their limits live."""

    def __init__(self, handler: Handler, limits: Limits | None = None, refuse: Refuse = json_refusal) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.refuse = refuse
        self.connections: set[HttpProtocol] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, backlog: int = 1024) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpProtocol(self), host, port, backlog=backlog,
                                                reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and close every connection (requests in flight are abandoned)."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


def blocking(handler: Callable[[Request], Response], executor: Executor | None = None) -> Handler:
    """A handler for :class:`HttpServer` from a blocking one, run on ``executor`` (default: the loop's)."""

    async def handle(request: Request) -> Response:
        return await asyncio.get_running_loop().run_in_executor(executor, handler, request)

    return handle


class ThreadedServer:
    """An :class:`HttpServer` on an event loop of its own thread, for processes whose main blocks.

    The scheduler and the event-source poller are plain blocking programs; their
    ``/metrics`` and ``/health`` still go through the one server and its limits.
    """

    def __init__(self, server: HttpServer, host: str, port: int) -> None:
        self.server = server
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="http-server", daemon=True)

    def start(self) -> int:
        """Listen (raises what binding raised); returns the bound port."""
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self.port

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self.port = loop.run_until_complete(self.server.start(self.host, self.port))
        except BaseException as exc:  # reported to start()'s caller
            self._failure = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self.server.close())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
