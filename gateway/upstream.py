"""A minimal asyncio HTTP/1.1 client with a keep-alive pool per upstream address.

The gateway's cost per request is dominated by its upstream call, so this client
does only what that call needs: one request at a time per connection, idle
connections reused (a new TCP connection per request would cost more than the
function), httptools to parse responses, and a timer handle instead of
``asyncio.wait_for`` for the deadline. It tells apart the failures the gateway
must treat differently: :class:`ConnectFailed` (the request never left, so another
instance may always be tried), :class:`UpstreamConnectionLost` (the instance went away under
the request: before any byte of an answer the function may have run, so only a route
whose operation is idempotent may re-send it; after, it did run) and any other
:class:`UpstreamError` (malformed answer, deadline passed: never re-sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass

import httptools


class UpstreamError(ConnectionError):
    """The request was sent (or may have been) but no complete answer came back."""


class ConnectFailed(UpstreamError):
    """No connection could be opened: the request never reached the upstream.

    ``refused`` tells a dead instance (nothing listens: take it out of rotation) from
    a slow one (the connect timed out, e.g. an overloaded host's accept queue: try
    another instance, but keep it in rotation — it is alive and may be the only one).
    """

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


class UpstreamConnectionLost(UpstreamError):
    """The connection ended (reset, EOF) after the request was written, before the answer was complete.

    What a SIGKILLed instance does to the requests it was running. With
    ``answer_started`` false no byte of an answer had arrived and whether the function
    ran is unknown, which is why re-sending is a per-route decision (``Retry`` filter
    in ``routes.yaml``), never a default; with it true the function certainly ran.
    """

    def __init__(self, message: str, answer_started: bool) -> None:
        super().__init__(message)
        self.answer_started = answer_started


class UpstreamTimeout(UpstreamError, TimeoutError):
    """No complete answer within the deadline."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` may only be awaited by one caller at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[UpstreamResponse] | None = None
        self.closed = False
        self.received = False
        self.idle_since = 0.0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.waiter is not None and not self.waiter.done():
            when = "during the answer" if self.received else "before any answer"
            self.waiter.set_exception(
                UpstreamConnectionLost(f"connection to {self.pool.address} lost {when}: {exc}",
                                       self.received))

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed response from {self.pool.address}: {exc}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        response = UpstreamResponse(self.parser.get_status_code(), self._headers, b"".join(self._body))
        keep_alive = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if not keep_alive:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, head: bytes, body: bytes, timeout: float) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[UpstreamResponse] = loop.create_future()
        self.waiter = waiter
        self.received = False
        transport = self.transport
        if transport is None or self.closed:
            raise UpstreamConnectionLost(f"connection to {self.pool.address} already closed",
                                         answer_started=False)
        transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            transport.write(body)
        timer = loop.call_later(timeout, self._on_timeout, waiter, timeout)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _on_timeout(self, waiter: asyncio.Future[UpstreamResponse], timeout: float) -> None:
        if waiter is self.waiter and not waiter.done():
            self._fail(UpstreamTimeout(f"no answer from {self.pool.address} within {timeout:.1f} s"))


#: An idle connection older than this is not reused: the server closes idle ones after
#: ``PAYFN_HTTP_IDLE_TIMEOUT`` (75 s), and a request must never meet that close half-way.
MAX_IDLE_SECONDS = 30.0


class UpstreamPool:
    """Keep-alive connections to one ``host:port``, opened on demand, up to ``max_idle`` kept."""

    def __init__(self, host: str, port: int, max_idle: int = 64, connect_timeout: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self._idle: deque[_Connection] = deque()
        self.closed = False
        self._host_header = f"Host: {self.address}\r\n".encode("latin-1")

    def forget(self, connection: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            refused = not isinstance(exc, TimeoutError)
            raise ConnectFailed(f"cannot connect to {self.address}: {exc!r}", refused) from exc
        return protocol

    async def request(self, method: str, target: str, body: bytes = b"",
                      headers: list[tuple[str, str]] | None = None,
                      timeout: float = 30.0) -> UpstreamResponse:
        """One request on an idle connection (or a new one); the connection returns to the pool after."""
        connection = None
        fresh_after = time.monotonic() - MAX_IDLE_SECONDS
        while self._idle:
            candidate = self._idle.pop()
            if candidate.closed:
                continue
            if candidate.idle_since < fresh_after:
                candidate.close()
                continue
            connection = candidate
            break
        if connection is None:
            connection = await self._connect()
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._host_header]
        for name, value in headers or ():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1"))
        try:
            response = await connection.request(b"".join(lines), body, timeout)
        except asyncio.CancelledError:
            connection.close()
            raise
        if not connection.closed and not self.closed and len(self._idle) < self.max_idle:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        elif not connection.closed:
            connection.close()
        return response

    def close(self) -> None:
        """Close idle connections now and busy ones when their request ends (the instance is gone)."""
        self.closed = True
        while self._idle:
            self._idle.pop().close()


class UpstreamPools:
    """One :class:`UpstreamPool` per instance address, dropped once the instance is gone."""

    def __init__(self, max_idle: int = 64, connect_timeout: float = 1.0) -> None:
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self._pools: dict[tuple[str, int], UpstreamPool] = {}

    def get(self, host: str, port: int) -> UpstreamPool:
        key = (host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = UpstreamPool(host, port, self.max_idle, self.connect_timeout)
        return pool

    def keep_only(self, live: set[tuple[str, int]]) -> None:
        """Close the pools of addresses no longer in ``live``."""
        for key in [k for k in self._pools if k not in live]:
            self._pools.pop(key).close()

    def close(self) -> None:
        self.keep_only(set())
