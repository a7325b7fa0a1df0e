"""The raw HTTP/1.1 load client of the gateway, runtime and peer benchmarks.

Why one module: the benchmarks compare numbers with each other (gateway vs direct
invoke, payfn vs serverless-offline vs chalice), which only means something if every
figure comes from the same client: the same connection handling, the same percentile
definition, the same paced schedule, the same wrk invocation.

Why a hand-made client: on a 2-core machine the client competes with the server
under test for CPU, so it must be cheap. A uvloop ``Protocol`` with pre-built request
bytes and at most one request in flight per keep-alive connection costs a few tens
of microseconds per request; aiohttp or httpx would cost several times that and
show up as a slower server. Answers are framed by ``Content-Length`` (every server
measured here sends it; an answer without one is taken as bodiless).

Three ways to load a server:

- :func:`closed_loop`: N connections, each sends the next request as soon as the
  previous answer arrives: maximum throughput, latency under saturation;
- :func:`paced`: a fixed request rate over the same connections, latency measured
  from each request's *scheduled* send time, so a server that stalls cannot hide its
  queueing delay (no coordinated omission). It also carries the client's timer
  lateness (up to ~1 ms with libuv's millisecond timers), so it reports the service
  time (from the actual write) as well;
- :func:`wrk`: wrk's closed loop (one thread, C code, so it takes the least CPU from
  the server), when wrk is installed (``make bench-deps``).

:func:`time_calls` measures a plain in-process call, the floor a server adds to.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, NamedTuple, TypeVar

import uvloop

from infra.drills.load_http import Connection

CONNECTIONS = 16
#: A run that has not finished this long after its planned end is stuck, not slow.
_STUCK_AFTER = 60.0

T = TypeVar("T")


def request_bytes(method: str, path: str, address: str, body: bytes = b"",
                  headers: Mapping[str, str] | None = None) -> bytes:
    """One keep-alive HTTP/1.1 request, built once and written as is for every send."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def connect(address: str, count: int = CONNECTIONS) -> list[Connection]:
    """``count`` connections to ``host:port``, opened before any timing starts."""
    host, port = address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    return [(await loop.create_connection(Connection, host, int(port)))[1] for _ in range(count)]


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (the same definition for every benchmark); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarize(latencies: list[float], elapsed: float, failures: Counter[str] | None = None) -> dict[str, Any]:
    """Count, rate and latency percentiles (ms) of one run; latencies are in seconds.

    ``errors`` counts the failed requests; ``error_kinds`` (only when there are some)
    says what they were, since "errors: 24" alone cannot tell overload from a bug.
    """
    failures = failures or Counter()
    summary: dict[str, Any] = {
        "requests": len(latencies),
        "errors": failures.total(),
        "rps": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 4),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 4),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 4) if latencies else float("nan"),
        "max_ms": round(max(latencies) * 1000, 4) if latencies else float("nan"),
    }
    if failures:
        summary["error_kinds"] = dict(failures)
    return summary


async def _bounded(work: Awaitable[T], seconds: float) -> T:
    """A run that hangs (a server that never answers) fails instead of blocking ``make bench``."""
    return await asyncio.wait_for(work, seconds + _STUCK_AFTER)


async def closed_loop(address: str, request: bytes, seconds: float,
                      connections: int = CONNECTIONS) -> dict[str, Any]:
    """Each connection sends its next request as soon as the previous answer arrives.

    A non-200 answer or a connection the server closed counts as an error; a closed
    connection is replaced, so one error does not end the run.
    """
    pool = await connect(address, connections)
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds

    async def worker(slot: int) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                status = await pool[slot].send(request)
            except ConnectionError:
                failures["connection closed"] += 1
                pool[slot] = (await connect(address, 1))[0]
                continue
            latencies.append(time.perf_counter() - started)
            if status != 200:
                failures[f"status {status}"] += 1

    started = time.perf_counter()
    try:
        await _bounded(asyncio.gather(*(worker(slot) for slot in range(connections))), seconds)
    finally:
        for connection in pool:
            connection.close()
    return summarize(latencies, time.perf_counter() - started, failures)


class Paced(NamedTuple):
    """A paced run's latencies, from the scheduled send time and from the actual write."""

    scheduled: dict[str, Any]
    service: dict[str, Any]


async def paced(address: str, request: bytes, rate: float, seconds: float,
                connections: int = CONNECTIONS) -> Paced:
    """``rate`` requests per second for ``seconds``, whatever the server does (open loop).

    A request whose time has come waits for a free connection if all are busy; that
    wait is in its latency from the scheduled time. ``rps`` is the rate achieved over
    the whole run, the drain included: below ``rate``, the server could not keep up.
    """
    pool = await connect(address, connections)
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for connection in pool:
        free.put_nowait(connection)
    from_schedule: list[float] = []
    service: list[float] = []
    failures: Counter[str] = Counter()

    async def one(scheduled: float) -> None:
        connection = await free.get()
        sent = time.perf_counter()
        try:
            status = await connection.send(request)
        except ConnectionError:
            failures["connection closed"] += 1
            connection = (await connect(address, 1))[0]
            pool.append(connection)
        else:
            done = time.perf_counter()
            service.append(done - sent)
            from_schedule.append(done - scheduled)
            if status != 200:
                failures[f"status {status}"] += 1
        free.put_nowait(connection)

    async def schedule() -> None:
        loop = asyncio.get_running_loop()
        tasks = []
        for index in range(int(rate * seconds)):
            scheduled = started + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(scheduled)))
        await asyncio.gather(*tasks)

    started = time.perf_counter()
    try:
        await _bounded(schedule(), seconds)
    finally:
        for connection in pool:
            connection.close()
    elapsed = time.perf_counter() - started
    return Paced(summarize(from_schedule, elapsed, failures), summarize(service, elapsed, failures))


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run one measurement on a fresh uvloop loop (the client's cheapest event loop)."""
    return uvloop.run(coroutine)


def time_calls(call: Callable[[], object], seconds: float) -> dict[str, Any]:
    """A no-argument call repeated for ``seconds`` in process: the floor any server adds to."""
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        sent = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - sent)
    return summarize(latencies, time.perf_counter() - started)


def wrk(url: str, seconds: float, connections: int = CONNECTIONS, method: str = "GET",
        body: bytes = b"", headers: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """wrk's closed loop (one thread, ``connections`` connections), or None if wrk is missing.

    Errors are wrk's non-2xx/3xx answers plus its socket errors (connect, read, write,
    timeout), so a server that drops connections under load shows it.
    """
    binary = shutil.which("wrk")
    if binary is None:
        return None
    lua = [f'wrk.method = "{method}"']
    lua += [f'wrk.headers["{name}"] = "{value}"' for name, value in (headers or {}).items()]
    if body:
        lua.append(f"wrk.body = [[{body.decode()}]]")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write("\n".join(lua) + "\n")
        script.flush()
        command = [binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                   "-s", script.name, url]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def number(pattern: str) -> float:
        found = re.search(pattern, output)
        return float(found.group(1)) if found else 0.0

    def latency(label: str) -> float:
        found = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if found is None:
            return float("nan")
        return round(float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)], 4)

    failures: Counter[str] = Counter({"non-2xx/3xx": int(number(r"Non-2xx or 3xx responses:\s+(\d+)"))})
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        for kind, count in zip(("connect", "read", "write", "timeout"), socket_errors.groups(), strict=True):
            failures[f"socket {kind}"] = int(count)
    failures = +failures  # only the kinds that happened
    figures: dict[str, Any] = {"requests": int(number(r"(\d+) requests in")), "errors": failures.total(),
                               "rps": number(r"Requests/sec:\s+([\d.]+)"), "p50_ms": latency("50"),
                               "p99_ms": latency("99")}
    if failures:
        figures["error_kinds"] = dict(failures)
    return figures
