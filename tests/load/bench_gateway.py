"""Benchmark of the gateway (``python -m tests.load.bench gateway``).

Starts a private moto server, the registry, one real function host running a no-op
proxy function (registered), and the gateway, all as separate processes as in the
stack, then measures the same function called two ways:

- **direct**: Lambda's Invoke API on the host (what the gateway itself calls);
- **gateway**: ``GET /api/payments/noop`` through the gateway (route, StripPrefix,
  API event matching, REST v1 event, invoke, result mapping, metrics, access log).

For each: **closed loop** at 16 keep-alive connections (maximum RPS; with the
built-in client, and with wrk when it is installed) and **paced** at 500 RPS, latency
measured from each request's scheduled send time (no coordinated omission). The
difference of the two paced percentiles is the latency the gateway adds.

The private set-up (:func:`payfn_noop`) and the process helpers are also what
``bench_peers`` measures payfn with, so both benchmarks measure the same thing.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.gateway_support import write_host_template
from tests.invoke_auth import invoke_headers
from tests.load import rawload

DURATION = float(os.environ.get("PAYFN_BENCH_SECONDS", "5"))
PACED_RPS = 500
DIRECT_BODY = b'{"path": "/payments/noop", "httpMethod": "GET"}'
DIRECT_PATH = "/2015-03-31/functions/NoopFunction/invocations"
DIRECT_HEADERS = invoke_headers(**{"Content-Type": "application/json"})
GATEWAY_PATH = "/api/payments/noop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, process: subprocess.Popen[Any] | None = None) -> None:
    """Wait for a 2xx answer; with ``process``, fail at once if that server has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


@contextmanager
def child_process(command: list[str], env: Mapping[str, str] | None = None, log: Path | None = None,
                  listening: bool = False,
                  cwd: Path | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A server process in its own process group, ended with the whole group.

    Its output goes to the file ``log`` (or nowhere), never to a pipe this process must
    drain: a drain thread would take CPU and the GIL from the load client while the
    servers log every request. With ``listening`` it waits for the child's
    ``LISTENING address`` line in ``log`` and yields that address. The group matters
    for servers that spawn workers (function environments, serverless-offline's Python
    processes through a shell): ending only the parent could leave them running.
    """
    if listening and log is None:
        raise ValueError("the LISTENING line is read from the log")
    output: IO[bytes] | int = log.open("wb") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)
    if not isinstance(output, int):
        output.close()
    try:
        yield process, _listening_address(process, command, log) if listening and log is not None else ""
    finally:
        _end_group(process)


def _listening_address(process: subprocess.Popen[bytes], command: list[str], log: Path,
                       timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("LISTENING"):
                return line.split()[1].removeprefix("http://")
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{' '.join(command[1:3])} did not start; its log ends: "
                       f"{log.read_text(errors='replace')[-2000:]}")


def _end_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM to the child's process group (its id is the child's pid), then SIGKILL to what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        process.wait(10)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


@dataclass(frozen=True)
class NoopStack:
    """Where the private set-up serves the no-op function: the host and the gateway."""

    host: str
    gateway: str

    @property
    def direct_request(self) -> bytes:
        return rawload.request_bytes("POST", DIRECT_PATH, self.host, DIRECT_BODY, DIRECT_HEADERS)

    @property
    def gateway_request(self) -> bytes:
        return rawload.request_bytes("GET", GATEWAY_PATH, self.gateway)


@contextmanager
def payfn_noop(folder: Path) -> Iterator[NoopStack]:
    """moto, registry, one function host with the no-op function, gateway; ready to serve it."""
    python = sys.executable
    template = write_host_template(folder)
    moto_port, registry_port = free_port(), free_port()
    with ExitStack() as stack:
        stack.enter_context(child_process(
            [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)]))
        wait_http(f"http://127.0.0.1:{moto_port}/moto-api/")
        env = {"PAYFN_AWS_ENDPOINT_URL": f"http://127.0.0.1:{moto_port}"}
        stack.enter_context(child_process(
            [python, "-m", "infra.registry", "--port", str(registry_port)], env))
        registry = f"http://127.0.0.1:{registry_port}"
        wait_http(registry + "/health")
        _, host = stack.enter_context(child_process(
            [python, "-m", "infra.runtime.host", "--service", "INGEST-SERVICE", "--port", "0",
             "--template", str(template), "--registry-url", registry], env, folder / "host.log",
            listening=True))
        gateway_process, gateway = stack.enter_context(child_process(
            [python, "-m", "gateway", "--port", "0", "--template", str(template), "--registry-url", registry,
             "--no-register"], env, folder / "gateway.log", listening=True))
        # Ready means routed: the gateway has seen the host in the registry.
        wait_http(f"http://{gateway}{GATEWAY_PATH}", 20.0, gateway_process)
        yield NoopStack(host, gateway)


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder, payfn_noop(Path(folder)) as noop:
        direct, through_gateway = noop.direct_request, noop.gateway_request

        async def measure() -> dict[str, Any]:
            await rawload.closed_loop(noop.host, direct, 1.0)
            await rawload.closed_loop(noop.gateway, through_gateway, 1.0)
            return {
                "direct_closed": await rawload.closed_loop(noop.host, direct, DURATION),
                "gateway_closed": await rawload.closed_loop(noop.gateway, through_gateway, DURATION),
                "direct_paced_500": (await rawload.paced(noop.host, direct, PACED_RPS, DURATION)).scheduled,
                "gateway_paced_500": (await rawload.paced(noop.gateway, through_gateway, PACED_RPS,
                                                          DURATION)).scheduled,
            }

        results = rawload.run(measure())
        direct_wrk = rawload.wrk(f"http://{noop.host}{DIRECT_PATH}", DURATION, method="POST",
                                 body=DIRECT_BODY, headers=DIRECT_HEADERS)
        gateway_wrk = rawload.wrk(f"http://{noop.gateway}{GATEWAY_PATH}", DURATION)
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
