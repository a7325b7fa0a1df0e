"""Benchmark of the Lambda runtime emulation's Invoke API (``python -m tests.load.bench_runtime``).

Starts a real function host running the no-op fixture function, then measures:

- **closed loop**: 16 keep-alive connections each sending the next invocation as soon
  as the previous answer arrives: the host's maximum throughput (RPS) and latency;
- **paced**: a fixed request rate (500 RPS by default) spread over the same
  connections; latency is reported twice: from the moment the request is written
  (the host's service time) and from its *scheduled* send time, so a stalled host
  cannot hide its queueing delay (no coordinated omission; this one also carries
  the client's timer lateness, up to ~1 ms with libuv's millisecond timers);
- **in process**: the same handler called directly, the floor the host adds to.

The client is :mod:`tests.load.rawload` (a minimal HTTP/1.1 protocol on uvloop), so
that on a small machine it takes as little CPU from the host under test as possible.
``run()`` returns the numbers as a dict; running the module prints them as a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.invoke_auth import invoke_headers
from tests.load import rawload

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


def _request_bytes(address: str) -> bytes:
    return rawload.request_bytes("POST", f"/2015-03-31/functions/{FUNCTION}/invocations", address,
                                 b'{"bench": true}', invoke_headers(**{"Content-Type": "application/json"}))


def _in_process(seconds: float) -> dict[str, Any]:
    """The handler called directly: what an invocation costs without any host."""
    spec = importlib.util.spec_from_file_location("bench_noop", FIXTURE_CODE / "noop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    event = {"bench": True}
    return rawload.time_calls(lambda: module.handler(event, None), seconds)


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
            request = _request_bytes(address)
            # warm-up: start the environments
            rawload.run(rawload.closed_loop(address, request, 1.0, connections))
            host_before, envs_before = _cpu_seconds(process.pid)
            closed = rawload.run(rawload.closed_loop(address, request, seconds, connections))
            host_after, envs_after = _cpu_seconds(process.pid)
            closed["host_cpu_us_per_request"] = (host_after - host_before) / closed["requests"] * 1e6
            closed["environment_cpu_us_per_request"] = (envs_after - envs_before) / closed["requests"] * 1e6
            paced_from_schedule, paced = rawload.run(
                rawload.paced(address, request, rate, seconds, connections))
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
