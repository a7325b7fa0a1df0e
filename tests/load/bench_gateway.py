"""Benchmark of the gateway (``python -m tests.load.bench gateway``).

Starts a private moto server, the registry, one real function host running a no-op
proxy function (registered), and the gateway, all as separate processes as in the
stack, then measures the same function called two ways:

- **direct**: Lambda's Invoke API on the host (what the gateway itself calls);
- **gateway**: ``GET /api/payments/noop`` through the gateway (route, StripPrefix,
  API event matching, REST v1 event, invoke, result mapping, metrics, access log).

For each: **closed loop** at 16 keep-alive connections (maximum RPS; wrk when it is
installed, else the built-in client) and **paced** at 500 RPS, latency measured from
each request's scheduled send time (no coordinated omission). The difference of the
two paced percentiles is the latency the gateway adds.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import uvloop

from tests.gateway_support import write_host_template

CONNECTIONS = 16
DURATION = float(os.environ.get("PAYFN_BENCH_SECONDS", "5"))
PACED_RPS = 500
DIRECT_BODY = b'{"path": "/payments/noop", "httpMethod": "GET"}'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _drain(stream: IO[str]) -> None:
    """Keep reading a child's stdout (function hosts log every invocation) so it never blocks."""
    for _ in stream:
        pass


@contextmanager
def _process(command: list[str], env: dict[str, str] | None = None,
             listening: bool = False) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child process; with ``listening`` it waits for its ``LISTENING address`` line."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE if listening else subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
    try:
        address = ""
        if listening:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("LISTENING"):
                    address = line.split()[1].removeprefix("http://")
                    break
            if not address:
                raise RuntimeError(f"{command[2]} exited with {process.wait(5)}")
            threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
        yield process, address
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class _Client(asyncio.Protocol):
    """One keep-alive connection, one request in flight, Content-Length framed answers."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        match = re.search(rb"content-length:\s*(\d+)", head)
        total = end + 4 + (int(match.group(1)) if match else 0)
        if len(self.buffer) < total:
            return
        del self.buffer[:total]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def send(self, data: bytes) -> int:
        if self.transport is None:
            raise ConnectionError("not connected")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def _connect(address: str) -> list[_Client]:
    host, port = address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    return [(await loop.create_connection(_Client, host, int(port)))[1] for _ in range(CONNECTIONS)]


async def _closed_loop(address: str, request: bytes, seconds: float) -> dict[str, float]:
    clients = await _connect(address)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(client: _Client) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            status = await client.send(request)
            latencies.append(time.perf_counter() - started)
            errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.perf_counter() - started
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    return {"rps": round(len(latencies) / elapsed, 1), "p50_ms": round(_percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2), "errors": errors}


async def _paced(address: str, request: bytes, rps: int, seconds: float) -> dict[str, float]:
    clients = await _connect(address)
    idle: asyncio.Queue[_Client] = asyncio.Queue()
    for client in clients:
        idle.put_nowait(client)
    latencies: list[float] = []
    errors = 0
    tasks = []

    async def one(scheduled: float) -> None:
        nonlocal errors
        client = await idle.get()
        status = await client.send(request)
        latencies.append(time.perf_counter() - scheduled)
        errors += status != 200
        idle.put_nowait(client)

    start = time.perf_counter()
    total = int(rps * seconds)
    for index in range(total):
        scheduled = start + index / rps
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    await asyncio.gather(*tasks)
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    return {"p50_ms": round(_percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round(max(latencies) * 1000, 2), "errors": errors}


def _wrk(url: str, lua: str | None, seconds: float) -> dict[str, float] | None:
    """wrk's closed-loop figures (one thread, 16 connections), or None if wrk is missing."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        command = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{max(1, int(seconds))}s", "--latency"]
        if lua:
            script.write(lua)
            script.flush()
            command += ["-s", script.name]
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def latency(label: str) -> float:
        found = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", output)
        if found is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]
        return round(float(found.group(1)) * scale, 2)

    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return {"rps": rps, "p50_ms": latency("50"), "p99_ms": latency("99"),
            "errors": int(non_2xx.group(1)) if non_2xx else 0}


def run() -> dict[str, Any]:
    python = sys.executable
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        template = write_host_template(Path(folder))
        moto_port, registry_port = _free_port(), _free_port()
        stack.enter_context(_process([python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)]))
        _wait_http(f"http://127.0.0.1:{moto_port}/moto-api/")
        env = {"PAYFN_AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}"}
        stack.enter_context(_process([python, "-m", "infra.registry", "--port", str(registry_port)], env))
        registry = f"http://127.0.0.1:{registry_port}"
        _wait_http(registry + "/health")
        _, host = stack.enter_context(_process(
            [python, "-m", "infra.runtime.host", "--service", "INGEST-SERVICE", "--port", "0",
             "--template", str(template), "--registry-url", registry], env, listening=True))
        _, gateway = stack.enter_context(_process(
            [python, "-m", "gateway", "--port", "0", "--template", str(template), "--registry-url", registry,
             "--no-register"], env, listening=True))
        _wait_http(f"http://{gateway}/actuator/health")
        direct_request = (f"POST /2015-03-31/functions/NoopFunction/invocations HTTP/1.1\r\nHost: {host}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(DIRECT_BODY)}\r\n\r\n"
                          ).encode() + DIRECT_BODY
        gateway_request = f"GET /api/payments/noop HTTP/1.1\r\nHost: {gateway}\r\n\r\n".encode()

        async def measure() -> dict[str, Any]:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                client = (await _connect(gateway))[0]
                status = await client.send(gateway_request)
                client.transport.close()  # type: ignore[union-attr]
                if status == 200:
                    break
                await asyncio.sleep(0.2)
            await _closed_loop(host, direct_request, 1.0)
            await _closed_loop(gateway, gateway_request, 1.0)
            return {
                "direct_closed": await _closed_loop(host, direct_request, DURATION),
                "gateway_closed": await _closed_loop(gateway, gateway_request, DURATION),
                "direct_paced_500": await _paced(host, direct_request, PACED_RPS, DURATION),
                "gateway_paced_500": await _paced(gateway, gateway_request, PACED_RPS, DURATION),
            }

        results = uvloop.run(measure())
        lua = ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
               f"wrk.body = '{DIRECT_BODY.decode()}'\n")
        direct_wrk = _wrk(f"http://{host}/2015-03-31/functions/NoopFunction/invocations", lua, DURATION)
        gateway_wrk = _wrk(f"http://{gateway}/api/payments/noop", None, DURATION)
        if direct_wrk is not None and gateway_wrk is not None:
            results["direct_wrk"] = direct_wrk
            results["gateway_wrk"] = gateway_wrk
        results["added_p50_ms_at_500rps"] = round(
            results["gateway_paced_500"]["p50_ms"] - results["direct_paced_500"]["p50_ms"], 2)
        results["added_p99_ms_at_500rps"] = round(
            results["gateway_paced_500"]["p99_ms"] - results["direct_paced_500"]["p99_ms"], 2)
        return results


if __name__ == "__main__":
    from tests.load.bench import render

    print(render({"gateway": run()}))
