"""A small open-model HTTP load generator (k6's ``ramping-arrival-rate``, in one asyncio loop).

Why our own: the scenarios need per-request bodies (a fresh idempotency key, merchants
spread over many ids), chained requests (authorize → capture → refund with the
paymentId of the previous answer) and an exact record of every 2xx answer for the
invariants afterwards. ``wrk`` is closed-model and Lua-only; ``hey`` sends one fixed
body. A uvloop ``Protocol`` client with pre-built request bytes costs a few tens of
microseconds of CPU per request; :attr:`LoadResult.client_cpu_seconds` reports what
it actually cost, so the numbers say whether the generator starved the system.

Model: iterations ARRIVE at the configured rate whatever the system does (open
model); each arrival takes an idle keep-alive connection or opens one, up to
``max_connections`` (k6's maxVUs). An arrival that finds none is dropped and
counted (k6's ``dropped_iterations``): a system that cannot keep up shows as a
lower achieved rate and dropped iterations, never as a quietly slower generator.
Latency is each request's own time on its connection (k6's ``http_req_duration``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvloop

from infra.drills.client import Answer, ClientLedger
from tests.load.rawload import Connection

#: (seconds, target rate at the end of the stage): the rate moves linearly across a stage.
Stage = tuple[float, float]


def _post(host: str, path: str, body: dict[str, Any]) -> bytes:
    payload = orjson.dumps(body)
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


@dataclass
class LoadResult:
    """What one scenario did; every request's 2xx answer is also in ``ledger``."""

    name: str
    planned: int = 0
    started: int = 0
    dropped: int = 0
    completed: int = 0
    failed_iterations: int = 0
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    client_cpu_seconds: float = 0.0
    peak_connections: int = 0
    #: Seconds since the start at which each iteration completed successfully.
    completions: list[float] = field(default_factory=list)

    @staticmethod
    def percentile(samples: list[float], q: float) -> float:
        if not samples:
            return float("nan")
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def requests(self) -> int:
        return sum(self.statuses.values())

    def errors(self) -> int:
        return sum(n for key, n in self.statuses.items() if not key.split()[-1].startswith("2"))


class OpenLoad:
    """Runs iterations at an arrival-rate profile against one base URL."""

    def __init__(self, host: str, port: int, max_connections: int = 400, timeout: float = 30.0,
                 merchants: int = 256, merchant_prefix: str = "LOAD") -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.timeout = timeout
        self.merchants = [f"{merchant_prefix}{index:04d}" for index in range(merchants)]
        self.ledger = ClientLedger()
        self._idle: list[Connection] = []
        self._open = 0
        self._counter = 0
        self._run_id = uuid.uuid4().hex[:10]
        self._started = time.monotonic()

    async def _connection(self) -> Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
            self._open -= 1
        if self._open >= self.max_connections:
            return None
        self._open += 1
        try:
            _, protocol = await asyncio.get_running_loop().create_connection(Connection, self.host,
                                                                             self.port)
        except OSError:
            self._open -= 1
            raise
        return protocol

    def _release(self, connection: Connection, healthy: bool) -> None:
        if healthy and not connection.closed:
            self._idle.append(connection)
        else:
            connection.close()
            self._open -= 1

    async def _call(self, result: LoadResult, connection: Connection, operation: str,
                    request: bytes) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        try:
            status, raw = await connection.exchange(request, self.timeout)
        except (TimeoutError, ConnectionError, OSError):
            connection.closed = True
            status, raw = 599, b"{}"
        seconds = time.perf_counter() - started
        result.latencies.setdefault(operation, []).append(seconds)
        result.statuses[f"{operation} {status}"] += 1
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {}
        answer = Answer(status, body if isinstance(body, dict) else {}, seconds)
        self.ledger.note(operation, answer)
        return status, answer.body

    async def _iteration(self, result: LoadResult, flow: bool) -> None:
        try:
            connection = await self._connection()
        except OSError:
            result.statuses["connect 599"] += 1
            result.failed_iterations += 1
            return
        if connection is None:
            result.dropped += 1
            return
        result.started += 1
        result.peak_connections = max(result.peak_connections, self._open)
        self._counter += 1
        merchant = self.merchants[self._counter % len(self.merchants)]
        key = f"{self._run_id}-{self._counter}"
        amount = 1000 + self._counter % 9000
        body = {"merchantId": merchant, "amount": amount, "currency": "KRW", "idempotencyKey": key}
        status, answer = await self._call(result, connection, "authorize",
                                          _post(self.host, "/api/payments/authorize", body))
        self.ledger.authorized(merchant, key, amount, "KRW",
                               Answer(status, answer, 0.0))
        ok = status == 200
        if ok and flow:
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
        self._release(connection, not connection.closed)
        if ok:
            result.completed += 1
            result.completions.append(time.monotonic() - self._started)
        else:
            result.failed_iterations += 1

    async def _run(self, name: str, stages: list[Stage], start_rate: float, flow: bool,
                   on_tick: Callable[[float], None] | None) -> LoadResult:
        result = LoadResult(name)
        tasks: set[asyncio.Task[None]] = set()
        cpu_before = _own_cpu_seconds()
        started = self._started = time.monotonic()
        edges = []
        elapsed_edge, rate = 0.0, start_rate
        for seconds, target in stages:
            edges.append((elapsed_edge, seconds, rate, target))
            elapsed_edge += seconds
            rate = target
        total = elapsed_edge

        def planned(t: float) -> float:
            done = 0.0
            for begin, seconds, low, high in edges:
                if t <= begin:
                    break
                span = min(t - begin, seconds)
                done += span * (low + (high - low) * span / seconds / 2) if seconds else 0.0
            return done

        while True:
            now = time.monotonic() - started
            if now >= total:
                break
            due = int(planned(now))
            while result.planned < due:
                result.planned += 1
                task = asyncio.create_task(self._iteration(result, flow))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if on_tick is not None:
                on_tick(now)
            await asyncio.sleep(0.002)
        result.planned = int(planned(total))
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout * 3 + 5)
        result.seconds = time.monotonic() - started
        result.client_cpu_seconds = _own_cpu_seconds() - cpu_before
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        self._open = 0
        return result

    def run(self, name: str, stages: list[Stage], start_rate: float, flow: bool = False,
            on_tick: Callable[[float], None] | None = None) -> LoadResult:
        """Run one scenario to its end (blocking); k6 stage semantics, ``start_rate`` at t=0."""
        return uvloop.run(self._run(name, stages, start_rate, flow, on_tick))


def _own_cpu_seconds() -> float:
    """This process's user+system CPU time (from /proc, like the rest of the report)."""
    with open("/proc/self/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
