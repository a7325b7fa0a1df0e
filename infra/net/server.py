"""payfn's one HTTP/1.1 server (asyncio + httptools): every listener payfn runs uses it.

The gateway, the function hosts' Invoke API, the registry and the background
processes' status endpoints all answer through :class:`HttpServer`, so there is one
policy for hostile input (:class:`~infra.net.limits.Limits`), enforced per connection
by :class:`~infra.net.protocol.HttpProtocol`. :func:`blocking` and
:class:`ThreadedServer` adapt it to blocking handlers and to processes whose main blocks.
It stays instead of uvicorn because it is faster here: docs/NET.md#infranetserverpy.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor

from infra.net.limits import Limits
from infra.net.messages import Handler, Refuse, Request, Response, json_refusal
from infra.net.protocol import HttpProtocol


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
