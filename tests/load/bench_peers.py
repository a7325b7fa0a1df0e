"""payfn against its local peers on one no-op handler (``python -m tests.load.bench peers``).

Issue #4 asks whether payfn's gateway + runtime costs less than what a developer would
otherwise run locally. Absolute numbers on a shared 2-core machine swing with whatever
else runs, so the peers are measured in the SAME run, back to back, and the answer is
a ratio (payfn / peer). Served, all at once, each by its own processes:

- **payfn_gateway**: ``GET /api/payments/noop`` through the gateway to a function host
  (``bench_gateway``'s private set-up: moto, registry, host, gateway);
- **payfn_direct**: the same function through the host's Invoke API (no gateway);
- **serverless_offline**: serverless 3 + serverless-offline 13 (``make bench-deps``
  installs them into ``.bench/``), an ``http`` (REST v1, lambda-proxy) GET event, the
  same handler file. serverless-offline runs a Python handler as a long-lived
  ``python3 invoke.py`` child per concurrent request, fed JSON lines on stdin; it finds
  ``python3`` on ``PATH`` (``VIRTUAL_ENV`` is set to this venv, Python 3.11, so the
  handler runs on the interpreter payfn's own functions use);
- **chalice_local**: ``chalice local`` (chalice in ``.bench/venv``), a view returning ``{}``:
  chalice's app object is its Lambda handler, so this is its no-op.

Every handler answers 200 with the body ``{}`` (checked before measuring). Each target
is warmed with closed-loop passes until a pass starts no new worker (serverless-offline
starts one Python process per concurrent request, payfn one environment per concurrent
invocation; ``workers_started_while_measured`` shows whether any started later), then
measured with the same closed loop (16 connections: wrk when installed, else the
built-in client) and the same paced 500 RPS run (latency from the scheduled send time).
That is repeated for ``PAYFN_BENCH_ROUNDS`` (5) rounds of ``PAYFN_BENCH_SECONDS`` (5) per
run, the order of the targets rotating each round, and each figure is the median over
the rounds, so a burst of load from elsewhere cannot fall on one target only. "Added"
latency is the paced percentile minus the in-process call of the same handler.

Settings that differ from the peers' defaults, and why: serverless-offline keeps idle
handler processes for an hour (default 60 s), so no peer is measured cold after waiting
for the others; chalice runs with ``--no-autoreload``, since its file watcher would
otherwise poll on the CPU being measured. Telemetry and notifications of serverless are
off (``SLS_TELEMETRY_DISABLED``, ``SLS_NOTIFICATIONS_MODE``): a local benchmark must not
call out to, or wait on, a remote service.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tests.gateway_support import HOST_FUNCTIONS
from tests.load import rawload
from tests.load.bench_gateway import (
    DIRECT_BODY,
    DIRECT_HEADERS,
    DIRECT_PATH,
    GATEWAY_PATH,
    child_process,
    free_port,
    payfn_noop,
    wait_http,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / ".bench"
SERVERLESS = BENCH_DIR / "node_modules" / "serverless" / "bin" / "serverless.js"
CHALICE = BENCH_DIR / "venv" / "bin" / "chalice"

DURATION = float(os.environ.get("PAYFN_BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("PAYFN_BENCH_ROUNDS", "5"))
PACED_RPS = 500
#: One warm-up pass (s), and at most this many more while workers are still starting.
WARMUP, WARM_PASSES = 1.0, 30
#: serverless under load takes 10-30 s to start on this machine.
START_TIMEOUT = 180.0
#: payfn's goal from the issue: p99 added latency at 500 RPS.
ADDED_P99_GOAL_MS = 5.0
PEERS = ("serverless_offline", "chalice_local")

#: One round of one target: its figures, and what its failed requests were.
Round = tuple[dict[str, float], Counter[str]]

SERVERLESS_YML = """\
service: payfn-peer
frameworkVersion: "3"
provider:
  name: aws
  runtime: python3.11
  region: us-east-1
  stage: bench
functions:
  noop:
    handler: proxy.noop
    events:
      - http:
          path: noop
          method: get
plugins:
  - serverless-offline
"""

CHALICE_APP = '''\
"""The no-op handler as a chalice view: an empty JSON object, 200."""

from chalice import Chalice

app = Chalice(app_name="payfn-peer")


@app.route("/noop")
def noop():
    return {}
'''
CHALICE_CONFIG = {"version": "2.0", "app_name": "payfn-peer", "stages": {"dev": {"api_gateway_stage": "api"}}}


@dataclass(frozen=True)
class Target:
    """One server of the no-op handler, and the one request every load run sends it."""

    name: str
    address: str
    path: str
    method: str = "GET"
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    #: How many workers (processes, environments) serve it now; None: it starts none on demand.
    workers: Callable[[], int] | None = field(default=None, compare=False)

    @property
    def request(self) -> bytes:
        return rawload.request_bytes(self.method, self.path, self.address, self.body, self.headers)

    def closed(self, seconds: float) -> dict[str, Any]:
        """The closed loop at 16 connections: wrk when it is installed, else the built-in client."""
        figures = rawload.wrk(f"http://{self.address}{self.path}", seconds, method=self.method,
                              body=self.body, headers=self.headers)
        if figures is None:
            figures = rawload.run(rawload.closed_loop(self.address, self.request, seconds))
        return figures


def _require_peers() -> None:
    missing = [str(path.relative_to(REPO_ROOT)) for path in (SERVERLESS, CHALICE) if not path.exists()]
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        raise RuntimeError(f"peers not installed ({', '.join(missing)}): run `make bench-deps`")


def _check_noop(url: str) -> None:
    """Every target must serve the same answer, or the comparison is not of the same work."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        status, body = answer.status, answer.read()
    if status != 200 or json.loads(body) != {}:
        raise RuntimeError(f"{url} answered {status} {body[:200]!r}, not 200 {{}}")


@contextmanager
def _peer(name: str, command: list[str], folder: Path, env: Mapping[str, str] | None = None,
          workers: Callable[[int], int] | None = None) -> Iterator[Target]:
    """A peer server on a free port (``{port}`` in ``command``) of ``folder``, serving ``/noop``.

    ``workers`` counts the server's workers from its process id (its process group).
    """
    port = free_port()
    log = folder / f"{name}.log"
    url = f"http://127.0.0.1:{port}/noop"
    with child_process([arg.format(port=port) for arg in command], env, log, cwd=folder) as (process, _):
        try:
            wait_http(url, START_TIMEOUT, process)
        except RuntimeError as error:
            raise RuntimeError(f"{name}: {error}; its log ends: {log.read_text()[-2000:]}") from error
        _check_noop(url)
        yield Target(name, f"127.0.0.1:{port}", "/noop",
                     workers=partial(workers, process.pid) if workers is not None else None)


@contextmanager
def serverless_offline(folder: Path) -> Iterator[Target]:
    """serverless-offline serving the no-op handler from a generated service."""
    folder.mkdir()
    (folder / "serverless.yml").write_text(SERVERLESS_YML, encoding="utf-8")
    (folder / "proxy.py").write_text(HOST_FUNCTIONS, encoding="utf-8")
    # serverless resolves its plugins (and prefers its own local copy) from the service's node_modules.
    (folder / "node_modules").symlink_to(BENCH_DIR / "node_modules")
    command = ["node", str(SERVERLESS), "offline", "start", "--host", "127.0.0.1", "--httpPort", "{port}",
               "--lambdaPort", str(free_port()), "--noPrependStageInUrl", "--terminateIdleLambdaTime", "3600"]
    env = {"SLS_TELEMETRY_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off", "VIRTUAL_ENV": sys.prefix}
    with _peer("serverless_offline", command, folder, env, _python_workers) as target:
        yield target


@contextmanager
def chalice_local(folder: Path) -> Iterator[Target]:
    """``chalice local`` serving the no-op view from a generated app."""
    (folder / ".chalice").mkdir(parents=True)
    (folder / "app.py").write_text(CHALICE_APP, encoding="utf-8")
    (folder / ".chalice" / "config.json").write_text(json.dumps(CHALICE_CONFIG), encoding="utf-8")
    command = [str(CHALICE), "local", "--host", "127.0.0.1", "--port", "{port}", "--no-autoreload"]
    with _peer("chalice_local", command, folder) as target:
        yield target


def _python_workers(group: int) -> int:
    """serverless-offline's handler processes (``python3 … invoke.py``) in its process group."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        python = Path(argv[0].decode()).name.startswith("python")
        if int(stat[2]) == group and python and any(arg.endswith(b"invoke.py") for arg in argv):
            count += 1
    return count


def _payfn_environments(host: str) -> int:
    """The no-op function's execution environments on payfn's host (its ``/health``)."""
    with urllib.request.urlopen(f"http://{host}/health", timeout=10) as answer:
        return int(json.load(answer)["functions"]["NoopFunction"]["environments"])


def _in_process(handler_file: Path, seconds: float) -> dict[str, Any]:
    """The no-op handler called in process with a REST v1 event: the floor every target adds to."""
    spec = importlib.util.spec_from_file_location("bench_peers_noop", handler_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    event = {"resource": "/noop", "path": "/noop", "httpMethod": "GET", "headers": {"Host": "localhost"},
             "queryStringParameters": None, "pathParameters": None, "body": None, "isBase64Encoded": False}
    return rawload.time_calls(lambda: module.noop(event, None), seconds)


def _warm(target: Target) -> int:
    """Closed-loop passes until a whole pass started no worker, so the target is measured warm.

    Workers start on demand (serverless-offline: a Python process per concurrent request;
    payfn: an environment per concurrent invocation), a few per pass on a loaded machine.
    Returns the number of workers (0 for a target that starts none).
    """
    rawload.run(rawload.closed_loop(target.address, target.request, WARMUP))
    if target.workers is None:
        return 0
    count = target.workers()
    for _ in range(WARM_PASSES):
        rawload.run(rawload.closed_loop(target.address, target.request, WARMUP))
        now = target.workers()
        if now == count:
            break
        count = now
    return count


def _measure(target: Target) -> Round:
    """One round of one target: warm-up, closed loop, paced run; its figures and its failures."""
    warm = _warm(target)
    closed = target.closed(DURATION)
    paced = rawload.run(rawload.paced(target.address, target.request, PACED_RPS, DURATION)).scheduled
    figures = {"rps": closed["rps"], "p50_ms": closed["p50_ms"], "p99_ms": closed["p99_ms"],
               "paced_p50_ms": paced["p50_ms"], "paced_p99_ms": paced["p99_ms"],
               "paced_achieved_rps": paced["rps"], "errors": closed["errors"],
               "paced_errors": paced["errors"], "workers": warm,
               "workers_started_while_measured": (target.workers() - warm) if target.workers else 0}
    failures = Counter({f"closed {kind}": n for kind, n in closed.get("error_kinds", {}).items()})
    failures.update({f"paced {kind}": n for kind, n in paced.get("error_kinds", {}).items()})
    return figures, failures


#: Figures added up over the rounds rather than taken as the median.
_SUMMED = ("errors", "paced_errors", "workers_started_while_measured")


def _combine(rounds: list[Round], floor: dict[str, Any]) -> dict[str, Any]:
    """Medians over the rounds (counts summed), the spread of RPS, the latency added over the floor."""
    figures = [measured for measured, _ in rounds]
    combined: dict[str, Any] = {key: round(statistics.median(r[key] for r in figures), 3)
                                for key in figures[0]}
    for key in _SUMMED:
        combined[key] = sum(r[key] for r in figures)
    combined["workers"] = max(r["workers"] for r in figures)
    rps = [r["rps"] for r in figures]
    combined["rps_spread_pct"] = round((max(rps) - min(rps)) / combined["rps"] * 100, 1)
    combined["rps_rounds"] = "/".join(f"{value:.0f}" for value in rps)  # how noisy the machine was
    combined["added_p50_ms"] = round(combined["paced_p50_ms"] - floor["p50_ms"], 3)
    combined["added_p99_ms"] = round(combined["paced_p99_ms"] - floor["p99_ms"], 3)
    failures = sum((failed for _, failed in rounds), Counter[str]())
    if failures:
        combined["error_kinds"] = dict(failures)
    return combined


def _significant(value: float) -> float:
    """Three significant digits: a ratio of 0.0026 must not print as 0.00."""
    return float(f"{value:.3g}")


def _ratios(payfn: dict[str, Any], peer: dict[str, Any], payfn_rounds: list[Round],
            peer_rounds: list[Round]) -> dict[str, float | str]:
    """payfn / peer of the medians: above 1 is ahead for RPS, below 1 is ahead for latencies.

    ``rps_paired`` is the median of the per-round RPS ratios instead: both sides of each
    ratio were measured within one round, so a load that drifts across the run (other
    work on the machine starting or ending) moves both alike; far from ``rps``, the
    machine's load changed under the run.
    """
    ratios: dict[str, float | str] = {
        key: _significant(payfn[key] / peer[key]) if peer[key] else float("nan")
        for key in ("rps", "p50_ms", "p99_ms", "paced_p50_ms", "paced_p99_ms")
    }
    per_round = [ours["rps"] / theirs["rps"]
                 for (ours, _), (theirs, _) in zip(payfn_rounds, peer_rounds, strict=True)]
    ratios["rps_paired"] = _significant(statistics.median(per_round))
    ahead = (payfn["rps"] > peer["rps"] and payfn["p50_ms"] < peer["p50_ms"]
             and payfn["paced_p99_ms"] < peer["paced_p99_ms"])
    ratios["payfn_ahead"] = "yes" if ahead else "no"
    return ratios


def run() -> dict[str, Any]:
    _require_peers()
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        (folder / "payfn").mkdir()
        noop = stack.enter_context(payfn_noop(folder / "payfn"))
        environments = partial(_payfn_environments, noop.host)
        targets = [
            Target("payfn_gateway", noop.gateway, GATEWAY_PATH, workers=environments),
            Target("payfn_direct", noop.host, DIRECT_PATH, "POST", DIRECT_BODY, DIRECT_HEADERS, environments),
            stack.enter_context(serverless_offline(folder / "offline")),
            stack.enter_context(chalice_local(folder / "chalice")),
        ]
        floor = _in_process(folder / "payfn" / "functions" / "proxy.py", 1.0)
        # payfn's two targets share the host: warm both before either is measured. A full-length
        # pass after the workers stopped growing warms what else warms with use (V8's JIT, caches).
        for target in targets:
            _warm(target)
            rawload.run(rawload.closed_loop(target.address, target.request, DURATION))
        rounds: dict[str, list[Round]] = {target.name: [] for target in targets}
        for index in range(ROUNDS):
            # Rotated each round, so no target is always measured first or right after the same one.
            shift = index % len(targets)
            for target in targets[shift:] + targets[:shift]:
                print(f"   round {index + 1}/{ROUNDS}: {target.name}", flush=True)
                rounds[target.name].append(_measure(target))
    results: dict[str, Any] = {
        "rounds": ROUNDS, "seconds": DURATION, "connections": rawload.CONNECTIONS, "paced_rps": PACED_RPS,
        "closed_loop_client": "wrk" if shutil.which("wrk") else "python",
        "load_average_before": load_before, "load_average_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "in_process_p50_us": round(floor["p50_ms"] * 1000, 3),
        "in_process_p99_us": round(floor["p99_ms"] * 1000, 3),
    }
    for name, measured in rounds.items():
        results[name] = _combine(measured, floor)
    for peer in PEERS:
        results[f"payfn_vs_{peer}"] = _ratios(results["payfn_gateway"], results[peer],
                                              rounds["payfn_gateway"], rounds[peer])
    within_goal = results["payfn_gateway"]["added_p99_ms"] < ADDED_P99_GOAL_MS
    results["payfn_added_p99_under_5ms"] = "yes" if within_goal else "no"
    return results


def format_table(result: dict[str, Any]) -> str:
    """The README's table: one row per target, then the ratios."""
    rows = [f"| target | RPS @{result['connections']} conns | p50 ms | p99 ms "
            f"| p50 / p99 ms @{result['paced_rps']} RPS | added p50 / p99 ms |",
            "|---|---:|---:|---:|---:|---:|"]
    for name in ("payfn_gateway", "payfn_direct", *PEERS):
        row = result[name]
        rows.append(f"| {name} | {row['rps']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                    f"| {row['paced_p50_ms']:.2f} / {row['paced_p99_ms']:.2f} "
                    f"| {row['added_p50_ms']:.2f} / {row['added_p99_ms']:.2f} |")
    rows.append("")
    rows.append("| payfn gateway / peer | RPS (paired per round) | p50 | p99 "
                "| paced p50 | paced p99 | ahead |")
    rows.append("|---|---:|---:|---:|---:|---:|---|")
    for peer in PEERS:
        ratio = result[f"payfn_vs_{peer}"]
        rows.append(f"| {peer} | {ratio['rps']:g} ({ratio['rps_paired']:g}) | {ratio['p50_ms']:g} "
                    f"| {ratio['p99_ms']:g} | {ratio['paced_p50_ms']:g} | {ratio['paced_p99_ms']:g} "
                    f"| {ratio['payfn_ahead']} |")
    rows.append("")
    rows.append(f"in-process call: p50 {result['in_process_p50_us']:.2f} µs, "
                f"p99 {result['in_process_p99_us']:.2f} µs; "
                f"{result['rounds']} rounds of {result['seconds']:.0f} s, closed loop by "
                f"{result['closed_loop_client']}; load average {result['load_average_before']} → "
                f"{result['load_average_after']} on {result['cpus']} CPUs")
    return "\n".join(rows)


if __name__ == "__main__":
    from tests.load.bench import render

    measured = run()
    print(render({"peers": measured}))
    print()
    print(format_table(measured))
