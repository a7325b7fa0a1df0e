"""The process drills: a function host SIGKILLed under load, a consumer's environment killed mid-batch.

The host drill kills one of two INGEST-SERVICE hosts while authorizes arrive; the
gateway must route around it and the registry drop its lease. The consumer drill kills
the balance projection's execution environment inside its transaction; the poller must
redeliver the batch and the projection apply it exactly once.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request

from infra.drills.client import CONNECTION_ERROR, Answer
from infra.drills.consistency import connect
from infra.drills.load import BlockingLoad, LoadResult
from infra.drills.report import DrillFailed
from infra.drills.steps import Drill, finish, open_drill, poll, statuses
from infra.drills.target import POLLER_APP
from infra.stack.process import pid_alive

#: Authorizes in flight at most at once under the host drill's load (each retried for up to 30 s).
HOST_LOAD_THREADS = 8


def authorize_load(drill: Drill) -> tuple[BlockingLoad, list[tuple[Answer, int]]]:
    """Open-model authorizes at ``drill_load_rps``, each retried with its idempotency key; the
    final answer and retry count of each lands in the returned list."""
    outcomes: list[tuple[Answer, int]] = []

    def authorize(_: int, __: LoadResult) -> bool:
        outcome = drill.client.authorize_retrying(drill.merchant, time.monotonic() + 30)
        outcomes.append(outcome)
        return outcome[0].status == 200

    return BlockingLoad(authorize, HOST_LOAD_THREADS, drain_seconds=60, finish=drill.client.close), outcomes


def drill_host(drill: Drill) -> None:
    """SIGKILL one of two INGEST-SERVICE hosts under load through the gateway."""
    report, client, config, target = drill.report, drill.client, drill.config, drill.target
    open_drill(drill)
    instances, took = poll(lambda: target.instances("INGEST-SERVICE"), lambda i: len(i) >= 2, 30)
    hosts = target.hosts("INGEST-SERVICE")
    report.check("two INGEST-SERVICE instances", "≥ 2 UP in the registry (payfn up --scale INGEST-SERVICE=2)",
                 len(instances) >= 2 and len(hosts) >= 2,
                 f"{len(instances)} registered, {len(hosts)} in the stack:"
                 f" {[i.instance_id for i in instances]}")
    victim = hosts[-1]
    victim_pid = target.pid(victim.name)
    victim_id = next(i for i in instances if i.port == victim.port)
    drill.cleanups.append(("restart the killed host", target.restore))

    load, outcomes = authorize_load(drill)
    load_started = time.monotonic()
    authorizes = load.start("authorizes", config.drill_load_rps)
    time.sleep(min(2.0, config.drill_outage_seconds / 2))
    if victim_pid is None:
        raise DrillFailed(f"{victim.name} is not running")
    target.kill_process_group(victim_pid)
    killed_at = time.monotonic()
    report.check("host SIGKILLed under load",
                 f"{victim.name} (pid {victim_pid}) and its environments are gone",
                 not pid_alive(victim_pid), f"{victim_id.instance_id}, load {config.drill_load_rps:g} req/s")
    time.sleep(config.drill_outage_seconds)
    load.stop()
    load_seconds = time.monotonic() - load_started
    finals = [answer for answer, _ in outcomes]
    retried = sum(1 for _, retries in outcomes if retries)
    ledger = drill.client.ledger
    raw = ledger.count("authorize 5") + ledger.count(f"authorize {CONNECTION_ERROR}")
    report.check("no client-visible failure", "every authorize answered 200, no 5xx or broken connection "
                 "(the gateway re-sends an authorize lost with the dying host: its route's Retry filter)",
                 bool(finals) and all(a.status == 200 for a in finals) and raw == 0,
                 f"{len(finals)} authorizes in {load_seconds:.0f} s ({len(finals) / load_seconds:.1f}/s),"
                 f" final statuses {sorted(set(a.status for a in finals))}, {raw} raw 5xx/connection answers")
    report.info("answers retried by the client", f"{retried} request(s), with the same idempotency key;"
                f" {authorizes.dropped} arrival(s) dropped with {HOST_LOAD_THREADS} authorizes in flight")
    after = [client.authorize(drill.merchant) for _ in range(10)]
    report.check("gateway routes around the dead host", "10 more authorizes all 200 at the first attempt",
                 all(a.status == 200 for a in after), statuses(after))
    lease = float(victim_id.lease_duration)
    renewed = victim_id.last_renewal or time.time()
    bound = max(0.0, renewed + lease - time.time()) + 5.0 + config.drill_recovery_slack_seconds
    listed, took = poll(lambda: [i.instance_id for i in target.instances("INGEST-SERVICE")],
                        lambda ids: victim_id.instance_id not in ids, bound, interval=1.0)
    report.check("dead instance leaves the registry", f"gone within its lease ({lease:g} s after the last "
                 f"renewal) + slack: {bound:.0f} s from now",
                 victim_id.instance_id not in listed,
                 f"gone {time.monotonic() - killed_at:.1f} s after the kill; still listed: {listed}")
    started = target.restore()
    drill.cleanups.pop()
    instances, took = poll(lambda: target.instances("INGEST-SERVICE"), lambda i: len(i) >= 2,
                           config.drill_health_timeout_seconds)
    report.check("host restarted (supervisor)", "2 instances UP again", len(instances) >= 2,
                 f"started {started}; {len(instances)} UP after {took:.1f} s")
    finish(drill)


BALANCE_FUNCTION = "BalanceProjectionFunction"


def _environment_pids(host_pid: int, function: str) -> list[int]:
    """Execution environments (worker processes) of ``function`` started by the host ``host_pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            if ppid != host_pid:
                continue
            with open(f"/proc/{entry}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"AWS_LAMBDA_FUNCTION_NAME={function}".encode() in variables:
            found.append(int(entry))
    return found


def _poller_errors(drill: Drill, function: str) -> float:
    """``payfn_eventsource_invocations_total{function, outcome="error"}`` summed over pollers."""
    total = 0.0
    for instance in drill.target.instances(POLLER_APP):
        try:
            with urllib.request.urlopen(f"{instance.base_url}/metrics", timeout=3) as response:  # noqa: S310
                text = response.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if (line.startswith("payfn_eventsource_invocations_total{") and f'function="{function}"' in line
                    and 'outcome="error"' in line):
                total += float(line.rsplit(" ", 1)[1])
    return total


def drill_consumer(drill: Drill) -> None:
    """Kill the balance projection's execution environment while its batch is inside its transaction."""
    report, client, config, target = drill.report, drill.client, drill.config, drill.target
    open_drill(drill)
    first = [client.authorize(drill.merchant) for _ in range(3)]
    settings = target.settings

    def projected() -> int:
        connection = connect(settings)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT authorized_total FROM merchant_balance WHERE merchant_id = %s"
                               " AND currency = 'KRW'", (drill.merchant,))
                row = cursor.fetchone()
                return int(row["authorized_total"]) if row else 0
        finally:
            connection.close()

    want = sum(a.body.get("amount", 0) for a in first)
    total, took = poll(projected, lambda t: t == want, config.drill_drain_timeout_seconds, interval=0.5)
    report.check("baseline consumed", "3 authorizes 200 and in the projection", total == want,
                 f"statuses {statuses(first)}; authorized_total {total} (want {want}) after {took:.1f} s")

    lock = connect(settings)
    drill.cleanups.append(("release the projection row lock", lock.close))
    with lock.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SELECT authorized_total FROM merchant_balance WHERE merchant_id = %s"
                       " AND currency = 'KRW' FOR UPDATE", (drill.merchant,))
    errors_before = _poller_errors(drill, BALANCE_FUNCTION)
    batch = [client.authorize(drill.merchant) for _ in range(10)]
    report.check("10 authorizes while the projection row is locked", "all 200", all(a.ok for a in batch),
                 statuses(batch))

    def waiting() -> int:
        probe = connect(settings)
        try:
            with probe.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST"
                               " WHERE INFO LIKE '%%merchant_balance%%' AND COMMAND = 'Query'"
                               " AND ID <> CONNECTION_ID() AND INFO NOT LIKE '%%PROCESSLIST%%'")
                return int(cursor.fetchone()["n"])
        finally:
            probe.close()

    blocked, took = poll(waiting, lambda n: n > 0, 30, interval=0.2)
    report.check("a consumer batch is mid-transaction", "the projection's upsert waits on the locked row",
                 blocked > 0, f"{blocked} statement(s) waiting after {took:.1f} s")
    host = target.hosts("CONSUMER-WORKER")[0]
    host_pid = target.pid(host.name)
    victims = _environment_pids(host_pid, BALANCE_FUNCTION) if host_pid else []
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    poll(lambda: [pid for pid in victims if pid_alive(pid)], lambda alive: not alive, 5, interval=0.05)
    report.check("execution environment killed mid-batch", f"SIGKILL every {BALANCE_FUNCTION} environment",
                 bool(victims) and not any(pid_alive(pid) for pid in victims), f"killed pids {victims}")
    time.sleep(0.5)
    lock.rollback()
    lock.close()
    drill.cleanups.pop()

    want += sum(a.body.get("amount", 0) for a in batch)
    total, took = poll(projected, lambda t: t == want, config.drill_drain_timeout_seconds, interval=0.5)
    report.check("batch redelivered and applied", "authorized_total includes the killed batch exactly once",
                 total == want, f"authorized_total {total} (want {want}) after {took:.1f} s")
    errors = _poller_errors(drill, BALANCE_FUNCTION) - errors_before
    report.check("the poller saw the crash and retried",
                 "payfn_eventsource_invocations_total{outcome=error} grew",
                 errors >= 1, f"+{errors:g} failed invocation(s) of {BALANCE_FUNCTION}")
    finish(drill)
