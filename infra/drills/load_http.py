"""The benchmarks' iterations of :mod:`infra.drills.load`: payments over raw keep-alive connections.

Why our own client: the scenarios need per-request bodies (a fresh idempotency key,
merchants spread over many ids), chained requests (authorize → capture → refund with
the paymentId of the previous answer) and an exact record of every 2xx answer for the
invariants afterwards. ``wrk`` is closed-model and Lua-only; ``hey`` sends one fixed
body. A uvloop ``Protocol`` client with pre-built request bytes costs a few tens of
microseconds of CPU per request; :attr:`LoadResult.client_cpu_seconds` reports what it
actually cost, so the numbers say whether the generator starved the system. Each
in-flight iteration holds one connection (idle ones are reused), so the generator's
concurrency cap is the connection cap (k6's maxVUs). Latency is each request's own
time on its connection (k6's ``http_req_duration``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

import orjson

from infra.drills.client import Answer, ClientLedger
from infra.drills.load import LoadResult, OpenLoad, Sample, Stage


def _post(host: str, path: str, body: dict[str, Any]) -> bytes:
    payload = orjson.dumps(body)
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight.

    The one client connection of the benchmarks: the raw loops of ``tests/load/rawload``
    read the status code (:meth:`send`), :class:`GatewayLoad` the body too (:meth:`exchange`).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        marker = head.find(b"\r\ncontent-length:")
        length = 0
        if marker >= 0:
            stop = head.find(b"\r\n", marker + 2)
            length = int(head[marker + 17: stop if stop > 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4: end + 4 + length])
        del self.buffer[: end + 4 + length]
        if b"\r\nconnection: close" in head:
            self.closed = True
        waiter, self.waiter = self.waiter, None
        if not waiter.done():  # a request that timed out has a cancelled waiter
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))

    async def exchange(self, data: bytes, timeout: float | None = None) -> tuple[int, bytes]:
        """Write one request, wait for its answer's status code and body."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed by the server")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await asyncio.wait_for(self.waiter, timeout)

    async def send(self, data: bytes) -> int:
        """Write one request, wait for its answer's status code."""
        return (await self.exchange(data))[0]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class GatewayLoad:
    """Authorizes (or authorize → capture → refund flows) at an arrival-rate profile on one gateway."""

    def __init__(self, host: str, port: int, max_connections: int = 400, timeout: float = 30.0,
                 merchants: int = 256, merchant_prefix: str = "LOAD") -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.timeout = timeout
        self.merchants = [f"{merchant_prefix}{index:04d}" for index in range(merchants)]
        self.ledger = ClientLedger()
        self.flow = False
        self._idle: list[Connection] = []
        self._open = 0
        self._counter = 0
        self._run_id = uuid.uuid4().hex[:10]

    async def _connection(self) -> Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
            self._open -= 1
        self._open += 1
        try:
            _, protocol = await asyncio.get_running_loop().create_connection(Connection, self.host,
                                                                             self.port)
        except OSError:
            self._open -= 1
            raise
        return protocol

    def _release(self, connection: Connection) -> None:
        if not connection.closed:
            self._idle.append(connection)
        else:
            connection.close()
            self._open -= 1

    async def _call(self, result: LoadResult, connection: Connection, operation: str,
                    request: bytes) -> tuple[int, dict[str, Any]]:
        at, started = time.monotonic(), time.perf_counter()
        try:
            status, raw = await connection.exchange(request, self.timeout)
        except (TimeoutError, ConnectionError, OSError):
            connection.closed = True
            status, raw = 599, b"{}"
        seconds = time.perf_counter() - started
        result.note(Sample(at, operation, status, seconds))
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        answer = Answer(status, body if isinstance(body, dict) else {}, seconds)
        self.ledger.note(operation, answer)
        return status, answer.body

    async def _iteration(self, index: int, result: LoadResult) -> bool:
        try:
            connection = await self._connection()
        except OSError:
            result.statuses["connect 599"] += 1
            return False
        result.peak_connections = max(result.peak_connections, self._open)
        self._counter += 1  # across runs, so a second run never replays a key of the first
        merchant = self.merchants[self._counter % len(self.merchants)]
        key = f"{self._run_id}-{self._counter}"
        amount = 1000 + self._counter % 9000
        body = {"merchantId": merchant, "amount": amount, "currency": "KRW", "idempotencyKey": key}
        status, answer = await self._call(result, connection, "authorize",
                                          _post(self.host, "/api/payments/authorize", body))
        self.ledger.authorized(merchant, key, amount, "KRW", Answer(status, answer, 0.0))
        ok = status == 200
        if ok and self.flow:
            payment_id = answer["paymentId"]
            for operation, path, extra in (("capture", f"/api/payments/capture/{payment_id}", {}),
                                           ("refund", f"/api/payments/refund/{payment_id}",
                                            {"reason": "load test"})):
                status, answer = await self._call(result, connection, operation,
                                                  _post(self.host, path, {"merchantId": merchant, **extra}))
                self.ledger.transitioned(payment_id, Answer(status, answer, 0.0))
                if status != 200:
                    ok = False
                    break
        self._release(connection)
        return ok

    def run(self, name: str, stages: Sequence[Stage], start_rate: float, flow: bool = False,
            on_tick: Callable[[float], None] | None = None) -> LoadResult:
        """Run one scenario to its end (blocking); k6 stage semantics, ``start_rate`` at t=0."""
        self.flow = flow
        load = OpenLoad(self._iteration, self.max_connections, drain_seconds=self.timeout * 3 + 5)
        try:
            return load.run(name, stages, start_rate, on_tick)
        finally:
            for connection in self._idle:
                connection.close()
            self._idle.clear()
            self._open = 0
