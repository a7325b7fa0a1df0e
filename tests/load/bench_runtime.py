"""Benchmark of the Lambda runtime emulation's Invoke API (``python tests/load/bench_runtime.py``).

Starts a real function host running the no-op fixture function, then measures:

- **closed loop**: 16 keep-alive connections each sending the next invocation as soon
  as the previous answer arrives: the host's maximum throughput (RPS) and latency;
- **paced**: a fixed request rate (500 RPS by default) spread over the same
  connections; latency is reported twice: from the moment the request is written
  (the host's service time) and from its *scheduled* send time, so a stalled host
  cannot hide its queueing delay (no coordinated omission; this one also carries
  the client's timer lateness, up to ~1 ms with libuv's millisecond timers);
- **in process**: the same handler called directly, the floor the host adds to.

The client is a minimal HTTP/1.1 protocol on uvloop, so that on a small machine it
takes as little CPU from the host under test as possible. ``run()`` returns the
numbers as a dict; running the module prints them as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvloop

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_CODE = REPO_ROOT / "tests" / "fixtures" / "functions"
FUNCTION = "NoopFunction"
# The bench's own template: the no-op fixture without the shared layer, so that edits
# to the layer (the host reloads on code changes) cannot add cold starts to a run.
BENCH_TEMPLATE = f"""\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  {FUNCTION}:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: {FIXTURE_CODE}
      Handler: noop.handler
      Runtime: python3.11
      Timeout: 3
      MemorySize: 128
"""


class _Connection(asyncio.Protocol):
    """One keep-alive connection that has at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buffer[:head_end]).lower()
        start = head.find(b"content-length:") + len(b"content-length:")
        length = int(head[start:head.find(b"\r\n", start) if head.find(b"\r\n", start) > 0 else None])
        total = head_end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(head[9:12])
        del self.buffer[:total]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


def _request_bytes(address: str) -> bytes:
    body = b'{"bench": true}'
    return (f"POST /2015-03-31/functions/{FUNCTION}/invocations HTTP/1.1\r\nHost: {address}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _connect(address: str, count: int) -> list[_Connection]:
    host, port = address.rsplit(":", 1)
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(count):
        _, protocol = await loop.create_connection(_Connection, host, int(port))
        connections.append(protocol)
    return connections


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }


async def _closed_loop(address: str, connections: int, seconds: float) -> dict[str, float]:
    data = _request_bytes(address)
    pool = await _connect(address, connections)
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(connection: _Connection) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            status = await connection.request(data)
            latencies.append(time.perf_counter() - sent)
            errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(worker(connection) for connection in pool))
    elapsed = time.perf_counter() - started
    for connection in pool:
        assert connection.transport is not None
        connection.transport.close()
    return _summary(latencies, errors, elapsed)


async def _paced(address: str, connections: int, rate: float,
                 seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    data = _request_bytes(address)
    pool = await _connect(address, connections)
    free: asyncio.Queue[_Connection] = asyncio.Queue()
    for connection in pool:
        free.put_nowait(connection)
    latencies: list[float] = []
    from_schedule: list[float] = []
    errors = 0
    tasks = []

    async def one(scheduled: float) -> None:
        nonlocal errors
        connection = await free.get()
        sent = time.perf_counter()
        status = await connection.request(data)
        done = time.perf_counter()
        latencies.append(done - sent)
        from_schedule.append(done - scheduled)
        errors += status != 200
        free.put_nowait(connection)

    started = time.perf_counter()
    total = int(rate * seconds)
    for index in range(total):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.get_running_loop().create_task(one(scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for connection in pool:
        assert connection.transport is not None
        connection.transport.close()
    return _summary(latencies, errors, elapsed), _summary(from_schedule, errors, elapsed)


def _in_process(seconds: float) -> dict[str, float]:
    """The handler called directly: what an invocation costs without any host."""
    spec = importlib.util.spec_from_file_location("bench_noop", FIXTURE_CODE / "noop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    latencies = []
    event = {"bench": True}
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        sent = time.perf_counter()
        module.handler(event, None)
        latencies.append(time.perf_counter() - sent)
    return _summary(latencies, 0, time.perf_counter() - started)


def _start_host(workdir: Path, max_environments: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port_file = workdir / "host.port"
    template = workdir / "template.yaml"
    template.write_text(BENCH_TEMPLATE, encoding="utf-8")
    env = {**os.environ, "PAYFN_RUNTIME_QUEUE_WAIT_MS": "1000"}
    if max_environments is not None:
        env["PAYFN_RUNTIME_MAX_ENVIRONMENTS"] = str(max_environments)
    log = (workdir / "host.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.runtime.host", "--functions", FUNCTION,
         "--template", str(template), "--no-register", "--port-file", str(port_file)],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"host did not start: {(workdir / 'host.log').read_text()}")
        time.sleep(0.05)
    return process, port_file.read_text().strip()


def _cold_starts(address: str) -> int:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("payfn_lambda_cold_starts_total{"):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) of the host process and of its environments (its children)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def of(process_id: int) -> float:
        try:
            fields = Path(f"/proc/{process_id}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / ticks

    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return of(pid), sum(of(int(child)) for child in children)


def run(seconds: float = 5.0, connections: int = 16, rate: float = 500.0,
        max_environments: int | None = None) -> dict[str, Any]:
    """Measure and return {"closed_loop": …, "paced": …, "in_process": …, "added_*_ms": …}.

    ``max_environments`` caps the no-op function's environments (``None``: the host
    default); below ``connections``, requests queue for an environment (up to 1 s).
    """
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        process, address = _start_host(Path(tmp), max_environments)
        try:
            uvloop.run(_closed_loop(address, connections, 1.0))  # warm-up: start the environments
            host_before, envs_before = _cpu_seconds(process.pid)
            closed = uvloop.run(_closed_loop(address, connections, seconds))
            host_after, envs_after = _cpu_seconds(process.pid)
            closed["host_cpu_us_per_request"] = (host_after - host_before) / closed["requests"] * 1e6
            closed["environment_cpu_us_per_request"] = (envs_after - envs_before) / closed["requests"] * 1e6
            paced, paced_from_schedule = uvloop.run(_paced(address, connections, rate, seconds))
            cold_starts = _cold_starts(address)
        finally:
            process.terminate()
            process.wait(timeout=15)
    in_process = _in_process(1.0)
    return {
        "function": FUNCTION,
        "connections": connections,
        "max_environments": max_environments,
        "cpus": os.cpu_count(),
        "closed_loop": closed,
        "paced": {**paced, "target_rps": rate},
        "paced_from_schedule": {**paced_from_schedule, "target_rps": rate},
        "in_process": in_process,
        "cold_starts": cold_starts,
        "added_p50_ms_at_rate": paced["p50_ms"] - in_process["p50_ms"],
        "added_p99_ms_at_rate": paced["p99_ms"] - in_process["p99_ms"],
    }


def format_table(result: dict[str, Any]) -> str:
    rows = [("scenario", "requests", "errors", "RPS", "p50 ms", "p99 ms", "mean ms")]
    for name, label in (("closed_loop", f"invoke API, {result['connections']} conns"),
                        ("paced", f"invoke API, {result['paced']['target_rps']:.0f} RPS paced"),
                        ("paced_from_schedule", "  same, from scheduled send"),
                        ("in_process", "handler in process")):
        data = result[name]
        rows.append((label, f"{data['requests']}", f"{data['errors']}", f"{data['rps']:.0f}",
                     f"{data['p50_ms']:.3f}", f"{data['p99_ms']:.3f}", f"{data['mean_ms']:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    closed = result["closed_loop"]
    lines.append(f"CPU per invocation (closed loop): host {closed['host_cpu_us_per_request']:.0f} µs, "
                 f"environment {closed['environment_cpu_us_per_request']:.0f} µs; "
                 f"cold starts in the whole run: {result['cold_starts']}")
    lines.append(f"added latency (service time) at {result['paced']['target_rps']:.0f} RPS: "
                 f"p50 {result['added_p50_ms_at_rate']:.3f} ms, p99 {result['added_p99_ms_at_rate']:.3f} ms "
                 f"({result['cpus']} CPUs, host and client on the same machine)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--max-environments", type=int, help="environments of the function (host default 16)")
    args = parser.parse_args()
    print(format_table(run(args.seconds, args.connections, args.rate, args.max_environments)))


if __name__ == "__main__":
    main()
