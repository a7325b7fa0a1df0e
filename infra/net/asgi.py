"""An ASGI application behind payfn's one HTTP server (the MCP servers' streamable HTTP).

So the MCP listener answers hostile input exactly as every other payfn listener does
(``infra.net.limits.Limits``) instead of with a second server's rules. Responses are
buffered: this serves request/response apps (MCP's stateless JSON mode), not streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from infra.net.messages import Request, Response

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Message, Receive, Send], Awaitable[None]]
#: Framing is the server's: an app's own length or chunking headers are dropped.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class AsgiBridge:
    """``handle`` is an :class:`~infra.net.server.HttpServer` handler that runs ``app`` per request."""

    def __init__(self, app: AsgiApp, host: str, port: int) -> None:
        self.app = app
        self.server = (host, port)
        self._lifespan: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._stopped = asyncio.Event()

    async def startup(self) -> None:
        """Run the app's lifespan startup (MCP's session manager starts there)."""
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete" and not started.done():
                started.set_result(None)
            elif message["type"] == "lifespan.startup.failed" and not started.done():
                started.set_exception(RuntimeError(message.get("message", "lifespan startup failed")))
            elif message["type"] == "lifespan.shutdown.complete":
                self._stopped.set()

        await self._events.put({"type": "lifespan.startup"})
        self._lifespan = asyncio.get_running_loop().create_task(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, self._events.get, send))
        await started

    async def shutdown(self) -> None:
        if self._lifespan is None:
            return
        await self._events.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), 5)
        self._lifespan.cancel()

    async def handle(self, request: Request) -> Response:
        answered = asyncio.Event()
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await answered.wait()
            return {"type": "http.disconnect"}

        status, headers, body = 500, [], []

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers.extend((bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                               for n, v in message.get("headers", ()) if bytes(n).lower() not in _FRAMING)
            elif message["type"] == "http.response.body":
                body.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    answered.set()

        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.protocol.removeprefix("HTTP/"), "method": request.method,
            "scheme": "http", "path": unquote(request.path), "raw_path": request.path.encode("latin-1"),
            "query_string": request.query.encode("latin-1"), "root_path": "",
            "headers": [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in request.headers],
            "client": (request.source_ip, 0), "server": self.server,
        }
        try:
            await self.app(scope, receive, send)
        finally:
            answered.set()
        return Response(status, b"".join(body), headers)
