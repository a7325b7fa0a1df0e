"""Open-model load through the gateway (``python -m tests.load.bench load``): the seed's k6 test and beyond.

Scenarios (k6 ``ramping-arrival-rate`` semantics, generator in ``infra/drills/load.py``):

- ``authorize_20rps``: authorize only, 5 → 20 RPS, 40 s held: a point below the knee,
  so the report shows the system's latency when it is not overloaded;
- ``seed_200rps``: authorize only, 50 → 200 RPS, then 200 RPS held: the seed's figure
  (p95 < 100 ms, errors < 1 %), for comparison;
- ``authorize_1000rps``: authorize only, ramp to 1,000 RPS, held 2 minutes
  (goal: p95 < 100 ms, errors < 0.1 %);
- ``flows_300ps``: authorize → capture → refund per iteration, ramp to 300 flows/s
  (goal ≥ 300 flows/s).

Each runs on a PRIVATE stack (own folder, free ports; the shared stack is never
touched), with the event flow (relay scheduler, Kafka poller) running, then waits for
the outbox to drain and the consumers to catch up and checks the invariants of
:mod:`infra.drills.consistency` (payment rows = 2xx authorize answers, outbox drained
with one event per transition, ledger entries per transition, every event consumed
once, projection = payments, reconciliation balanced).

Rate limits: the seed's 1,000/min per merchant would throttle one merchant at 200 RPS.
The limits are NOT raised: ``PAYFN_RATELIMIT_*`` set in a host's environment does not
reach the functions (an execution environment gets only the template's variables, as
on Lambda, and the template has no rate-limit parameter), so the load is spread over
``PAYFN_BENCH_LOAD_MERCHANTS`` merchants (default 256: at 1,000 RPS each one sends
~4/s = 234/min, under every default limit).

Reported per scenario: target and achieved rate (over the hold), p50/p95/p99 per
operation, error rate, dropped iterations (arrivals that found no free connection),
the generator's own CPU (``/proc/self/stat``), the machine's CPU busy share
(``/proc/stat``) and the CPU share of each stack component (its process group in
``/proc``), which names the bottleneck.

Knobs: ``PAYFN_BENCH_LOAD_SCENARIOS`` (comma list), ``PAYFN_BENCH_LOAD_HOLD_SCALE``
(multiplies hold durations, e.g. 0.25 for a quick look), ``PAYFN_BENCH_LOAD_MERCHANTS``,
``PAYFN_BENCH_LOAD_MAX_CONNECTIONS``; ``PAYFN_BENCH_LOAD_STACK=current`` loads the stack of the
current environment instead of a private one (its host knobs are then whatever it runs with).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from infra.drills.client import GatewayClient
from infra.drills.consistency import check_consistency
from infra.drills.load import LoadResult, Stage
from infra.drills.load_http import GatewayLoad
from infra.drills.report import DrillFailed, Report
from infra.drills.target import DrillTarget, private_stack


@dataclass(frozen=True)
class Scenario:
    name: str
    flow: bool
    start_rate: float
    ramp_seconds: float
    rate: float
    hold_seconds: float
    goal: str

    @property
    def merchant_prefix(self) -> str:
        """The scenario's own merchants, so that its invariant check sees only its payments."""
        return "L" + self.name.upper().replace("_", "")

    def stages(self, hold_scale: float) -> list[Stage]:
        return [(self.ramp_seconds, self.rate), (self.hold_seconds * hold_scale, self.rate)]


SCENARIOS = {
    s.name: s for s in (
        Scenario("authorize_20rps", False, 5, 10, 20, 40, "reference point below the knee: errors 0"),
        Scenario("seed_200rps", False, 50, 15, 200, 45, "seed: p95 < 100 ms, errors < 1 %"),
        Scenario("authorize_1000rps", False, 100, 30, 1000, 120, "p95 < 100 ms, errors < 0.1 %"),
        Scenario("flows_300ps", True, 30, 20, 300, 60, ">= 300 flows/s (authorize+capture+refund)"),
    )
}
DRAIN_TIMEOUT = 600.0
#: Function-host knobs of the benchmark stack (host environment, not the functions'):
#: environments started ahead of demand (Lambda's provisioned concurrency; a cold start
#: costs seconds on a busy 2-core machine), a queue wait that absorbs arrival bursts
#: instead of throttling them after 100 ms, and no code-change reload: in a working tree
#: others edit, every saved file under layers/ would retire every warm environment of
#: every host mid-run (a cold-start storm the benchmark would measure instead of the system).
HOST_ENV = {
    "PAYFN_RUNTIME_PREWARM": os.environ.get("PAYFN_RUNTIME_PREWARM", "6"),
    "PAYFN_RUNTIME_QUEUE_WAIT_MS": os.environ.get("PAYFN_RUNTIME_QUEUE_WAIT_MS", "2000"),
    "PAYFN_RUNTIME_CODE_CHECK_SECONDS": os.environ.get("PAYFN_RUNTIME_CODE_CHECK_SECONDS", "86400"),
}


class CpuSampler:
    """CPU seconds per stack component: its process group, plus the children it started in
    sessions of their own (a function host's execution environments)."""

    def __init__(self, groups: dict[int, str]) -> None:
        self.groups = groups
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> tuple[Counter[str], float, float]:
        """(CPU seconds per component, machine busy seconds, machine total seconds) so far."""
        per: Counter[str] = Counter()
        stats: dict[int, tuple[int, int, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu = (int(fields[11]) + int(fields[12])) / self.tick
            stats[int(entry)] = (int(fields[1]), int(fields[2]), cpu)
        for ppid, pgrp, seconds in stats.values():
            name = self.groups.get(pgrp)
            if name is None and ppid in stats:
                parent_group = self.groups.get(stats[ppid][1])
                name = f"{parent_group} envs" if parent_group else None
            if name is not None:
                per[name] += seconds
        with open("/proc/stat", encoding="ascii") as stat:
            cpu = [int(v) for v in stat.readline().split()[1:]]
        idle = cpu[3] + cpu[4]
        return per, (sum(cpu) - idle) / self.tick, sum(cpu) / self.tick


def _groups(target: DrillTarget) -> dict[int, str]:
    groups = {}
    supervisor = target.supervisor
    for component in supervisor.components:
        pid = supervisor.process(component).pid
        if pid is not None:
            groups[pid] = component.name
    for helper in target.helpers:
        if helper.pid is not None:
            groups[helper.pid] = helper.name.removeprefix("drill-")
    groups[os.getpid()] = "load-generator"
    return groups


def _ms(samples: list[float], q: float) -> float:
    return round(LoadResult.percentile(samples, q) * 1000, 1)


def _summary(scenario: Scenario, result: LoadResult, hold_from: float, hold_to: float,
             cpu: Counter[str], busy: float, total: float) -> dict[str, Any]:
    held = [t for t in result.completions if hold_from <= t <= hold_to]
    requests = result.requests()
    out: dict[str, Any] = {
        "goal": scenario.goal,
        "target_rate": scenario.rate,
        "achieved_rate_hold": round(len(held) / max(hold_to - hold_from, 1e-9), 1),
        "iterations_planned": result.planned,
        "iterations_ok": result.completed,
        "iterations_failed": result.failed_iterations,
        "dropped_iterations": result.dropped,
        "requests": requests,
        "error_rate_pct": round(100 * result.errors() / max(requests, 1), 3),
        "statuses": ", ".join(f"{k}:{v}" for k, v in sorted(result.statuses.items())),
        "peak_connections": result.peak_connections,
    }
    for operation, samples in result.latencies.items():
        out[operation] = {"p50_ms": _ms(samples, 0.50), "p95_ms": _ms(samples, 0.95),
                          "p99_ms": _ms(samples, 0.99)}
    window = result.seconds
    out["client_cpu_pct_of_core"] = round(100 * result.client_cpu_seconds / window, 1)
    out["client_cpu_us_per_request"] = round(1e6 * result.client_cpu_seconds / max(requests, 1), 1)
    cores = os.cpu_count() or 1
    # The CPU counters cover the hold only: shares are of the hold's wall time.
    hold = max(hold_to - hold_from, 1e-9)
    out["machine_cpu_busy_pct"] = round(100 * busy / max(total, 1e-9), 1)
    # Whatever the machine spent outside this stack and the generator (other tests, other stacks).
    out["cpu_pct_of_core_outside_stack"] = round(100 * max(busy - sum(cpu.values()), 0.0) / hold, 1)
    out["cores"] = cores
    # Every component above 1 % of a core: the long tail is where a "missing" core hides.
    top = [(name, seconds) for name, seconds in sorted(cpu.items(), key=lambda item: -item[1])
           if seconds >= 0.01 * hold]
    out["cpu_pct_of_core_by_component"] = ", ".join(f"{name} {100 * seconds / hold:.0f}"
                                                    for name, seconds in top)
    # CPU time is what contention does not inflate: the cost of one successful iteration.
    done = max(len(held), 1)
    out["cpu_ms_per_ok_iteration_by_component"] = ", ".join(f"{name} {1000 * seconds / done:.1f}"
                                                            for name, seconds in top)
    return out


def _invariants(target: DrillTarget, load: GatewayLoad) -> dict[str, Any]:
    """The drills' consistency check, summarised (PASS, or the first failing step)."""
    report = Report("invariants", out=io.StringIO())
    client = GatewayClient(target.settings.gateway_url, load.ledger, timeout=120)
    started = time.monotonic()
    try:
        check_consistency(report, target.settings, client, DRAIN_TIMEOUT, read_kafka=False)
    except DrillFailed:
        pass
    finally:
        client.close()
    checks = [s for s in report.steps if s.verdict != "INFO"]
    failed = [s for s in checks if s.verdict == "FAIL"]
    drained = next((s.observed for s in report.steps if s.name == "outbox drained"), "")
    verdict = f"PASS ({len(checks)} checks)" if not failed else f"FAIL {failed[0].name}: {failed[0].observed}"
    reconciliation = next((f"{s.verdict} {s.observed[:100]}" for s in report.steps
                           if s.name.startswith("reconciliation")), "not checked")
    return {"invariants": verdict[:300], "outbox_drain": drained, "reconciliation": reconciliation,
            "invariants_seconds": round(time.monotonic() - started, 1)}


def run_scenario(target: DrillTarget, scenario: Scenario, hold_scale: float) -> dict[str, Any]:
    settings = target.settings
    load = GatewayLoad(settings.gateway_host, settings.gateway_port,
                    max_connections=int(os.environ.get("PAYFN_BENCH_LOAD_MAX_CONNECTIONS", "400")),
                    merchants=int(os.environ.get("PAYFN_BENCH_LOAD_MERCHANTS", "256")),
                    merchant_prefix=scenario.merchant_prefix)
    sampler = CpuSampler(_groups(target))
    stages = scenario.stages(hold_scale)
    hold_from = scenario.ramp_seconds
    marks: dict[str, tuple[Counter[str], float, float]] = {}

    def on_tick(now: float) -> None:
        if "hold" not in marks and now >= hold_from:
            marks["hold"] = sampler.sample()

    before = sampler.sample()
    result = load.run(scenario.name, stages, scenario.start_rate, flow=scenario.flow, on_tick=on_tick)
    after = sampler.sample()
    start = marks.get("hold", before)
    cpu = after[0] - start[0]
    hold_to = hold_from + stages[1][0]
    summary = _summary(scenario, result, hold_from, hold_to, cpu, after[1] - start[1], after[2] - start[2])
    summary["cpu_window"] = "hold phase"
    summary.update(_invariants(target, load))
    return summary


def _scenario_on_its_stack(scenario: Scenario, hold_scale: float) -> dict[str, Any]:
    """One scenario on a private stack of its own (or on this environment's stack).

    A fresh stack per scenario, because the local broker's cost grows with what it
    holds (noida-db re-serialises its snapshot while records change): on a shared
    stack every scenario would pay for the events of the ones before it.
    """
    with contextlib.ExitStack() as stack:
        if os.environ.get("PAYFN_BENCH_LOAD_STACK") == "current":
            target = DrillTarget()
        else:
            target = stack.enter_context(private_stack(extra_env=HOST_ENV))
        stack.callback(target.stop_helpers)
        target.ensure_event_flow(60)
        warm = GatewayLoad(target.settings.gateway_host, target.settings.gateway_port, merchant_prefix="WARM")
        warm.run("warmup", [(10, 100)], 10)
        return run_scenario(target, scenario, hold_scale)


def run() -> dict[str, Any]:
    names = [n.strip() for n in os.environ.get("PAYFN_BENCH_LOAD_SCENARIOS", ",".join(SCENARIOS)).split(",")
             if n.strip()]
    hold_scale = float(os.environ.get("PAYFN_BENCH_LOAD_HOLD_SCALE", "1"))
    merchants = os.environ.get("PAYFN_BENCH_LOAD_MERCHANTS", "256")
    profile = f"{merchants} merchants, limits unchanged, a fresh stack per scenario, host env {HOST_ENV}"
    results: dict[str, Any] = {"profile": profile}
    for name in names:
        print(f"-- {name}", flush=True)
        results[name] = _scenario_on_its_stack(SCENARIOS[name], hold_scale)
        print(results[name], flush=True)
    return results


if __name__ == "__main__":
    from tests.load.bench import render

    print(render({"load": run()}))
