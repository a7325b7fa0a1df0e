"""The drills: what each one breaks, what it asserts at every step.

Every drill starts with the same two steps (the gateway and the service answer; the
event flow runs) and ends with :func:`infra.drills.consistency.check_consistency`.
Whatever a drill stops or kills is restored in its cleanup even when a step failed,
so a failed drill never leaves a component of the stack down.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from payfn_shared.payments.publisher import BREAKER_NAME
from payfn_shared.platform.breaker import BreakerConfig, RedisCircuitBreaker
from payfn_shared.platform.config import load_dataclass

from infra.drills.client import CONNECTION_ERROR, Answer, GatewayClient
from infra.drills.config import DrillConfig
from infra.drills.consistency import check_consistency, connect, expand_in, in_list
from infra.drills.load import BlockingLoad, LoadResult
from infra.drills.report import DrillFailed, Report
from infra.drills.target import POLLER_APP, SCHEDULER_APP, DrillTarget
from infra.runtime.functions import load_definitions, parameter_overrides, template_parameters
from infra.sam.template import TEMPLATE_PATH, load_template
from infra.stack.process import pid_alive, port_open

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "CLOSED", "OPEN", "HALF_OPEN"
WAIT_PARAMETER = "BreakerWaitDurationInOpenStateSeconds"
HALF_OPEN_PARAMETER = "BreakerMaxWaitDurationInHalfOpenStateSeconds"
AUTHORIZE_FUNCTION = "AuthorizeFunction"


@dataclass
class Drill:
    """Everything one drill run uses; ``cleanups`` run in reverse order at the end, always."""

    target: DrillTarget
    config: DrillConfig
    report: Report
    client: GatewayClient
    merchant: str = field(default_factory=lambda: f"DRILL{uuid.uuid4().hex[:12]}")
    cleanups: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def parameter(self, name: str) -> float:
        """A template parameter as the function hosts see it (``PAYFN_PARAMETER_<Name>`` or default)."""
        value = parameter_overrides().get(name) or self.target.supervisor.template.parameters[name]
        return float(value)


def poll(probe: Callable[[], T], done: Callable[[T], bool], timeout: float,
         interval: float = 0.25) -> tuple[T, float]:
    """Call ``probe`` until ``done(value)`` or ``timeout``; returns the last value and the time taken."""
    started = time.monotonic()
    while True:
        value = probe()
        elapsed = time.monotonic() - started
        if done(value) or elapsed >= timeout:
            return value, elapsed
        time.sleep(interval)


def surely_opens(snapshot: dict[str, object], config: BreakerConfig, successes: int, failures: int) -> bool:
    """Whether ``successes`` then ``failures`` calls open a CLOSED breaker whatever its window holds.

    A count-based window keeps the last ``sliding_window_size`` calls; which of the calls
    already there the new ones push out is not known, so the worst case is assumed (the
    failures go first). On a fresh breaker this is the seed's 5 + 6 = 54.5 %.
    """
    size = config.sliding_window_size
    buffered = int(snapshot.get("numberOfBufferedCalls", 0))  # type: ignore[call-overload]
    failed = int(snapshot.get("numberOfFailedCalls", 0))  # type: ignore[call-overload]
    calls = buffered + successes + failures
    evicted = max(0, calls - size)
    in_window = min(calls, size)
    worst_failed = min(in_window, max(0, failed - evicted) + failures)
    rate = 100 * worst_failed / in_window if in_window else 0.0
    return in_window >= config.closed_minimum and rate >= config.failure_rate_threshold


def ingest_breaker_config(target: DrillTarget) -> BreakerConfig:
    """The kafka-publisher breaker's settings as the ingest functions see them (their environment)."""
    template = load_template(TEMPLATE_PATH, template_parameters(target.settings))
    definition = load_definitions(template, TEMPLATE_PATH.parent, names=[AUTHORIZE_FUNCTION])[0]
    config: BreakerConfig = load_dataclass(BreakerConfig, env=definition.variables)
    return config


def prepare_breaker_window(drill: Drill) -> None:
    """Say what the breaker's window holds; reset it (an admin transition) when the seed's outage
    could not open it, e.g. on a stack whose window is already full of successes."""
    report, config = drill.report, drill.config
    breaker = ingest_breaker_config(drill.target)
    before = drill.client.breaker().body
    report.info("breaker window before the drill",
                f"{before.get('numberOfBufferedCalls')} of {breaker.sliding_window_size} calls buffered, "
                f"{before.get('numberOfFailedCalls')} failed (rate {before.get('failureRate')} %); opens at "
                f"{breaker.failure_rate_threshold:g} % of at least {breaker.closed_minimum} calls")
    if surely_opens(before, breaker, config.drill_warmup_requests, config.drill_outage_requests):
        return
    RedisCircuitBreaker(BREAKER_NAME, breaker).reset()
    after = drill.client.breaker().body
    report.check("breaker window reset for the drill",
                 f"{config.drill_warmup_requests} successes + {config.drill_outage_requests} failures cannot "
                 "open the window as it is: admin transition to CLOSED, empty window",
                 after.get("state") == CLOSED and after.get("numberOfBufferedCalls") == 0,
                 f"snapshot {after}")


def breaker_state(drill: Drill) -> str:
    answer = drill.client.breaker()
    return str(answer.body.get("state")) if answer.ok else f"HTTP {answer.status}"


def _statuses(answers: list[Answer]) -> str:
    return ", ".join(str(a.status) for a in answers)


def _latencies(answers: list[Answer]) -> str:
    return ", ".join(f"{a.seconds * 1000:.0f}" for a in answers) + " ms"


def open_drill(drill: Drill) -> None:
    """Steps every drill starts with: the stack answers, the event flow runs."""
    report, timeout = drill.report, drill.config.drill_health_timeout_seconds
    health, took = poll(lambda: drill.client.get_json("/actuator/health").status, lambda s: s == 200, timeout)
    report.check("gateway healthy", f"GET /actuator/health = 200 within {timeout:.0f} s", health == 200,
                 f"HTTP {health} after {took:.1f} s")
    answer, took = poll(drill.client.breaker, lambda a: a.ok, timeout)
    report.check("INGEST-SERVICE answers through the gateway",
                 "GET /api/circuit-breaker/kafka-publisher = 200",
                 answer.ok, f"HTTP {answer.status} after {took:.1f} s: {str(answer.body)[:120]}")
    started = drill.target.ensure_event_flow(timeout)
    drill.cleanups.append(("stop the drill's event-flow helpers", drill.target.stop_helpers))
    running = {app: len(drill.target.instances(app)) for app in (SCHEDULER_APP, POLLER_APP)}
    report.check("event flow runs", "outbox relay scheduler and Kafka event-source poller registered UP",
                 all(running.values()),
                 f"instances {running}" + (f"; started by the drill (not part of the stack): {started}"
                                            if started else "; both part of the stack"))


def warm_up(drill: Drill) -> None:
    """The seed's warm-up: one authorize (retried with its key) so the timed steps meet a warm
    environment; a cold start costs seconds on a busy machine and may time out."""
    timeout = drill.config.drill_health_timeout_seconds
    started = time.monotonic()
    answer, retries = drill.client.authorize_retrying(drill.merchant, started + timeout)
    drill.report.check("warm-up", f"an authorize answers 200 within {timeout:.0f} s (retried with its key)",
                       answer.status == 200,
                       f"HTTP {answer.status} after {time.monotonic() - started:.1f} s and {retries} retries")


def unpublished(drill: Drill, payment_ids: list[str]) -> int:
    """How many of these payments' outbox rows are not published yet."""
    connection = connect(drill.target.settings)
    try:
        with connection.cursor() as cursor:
            marks, params = in_list(payment_ids)
            cursor.execute(expand_in("SELECT COUNT(*) AS n FROM outbox_event WHERE published_at IS NULL"
                                     " AND aggregate_id IN ($)", marks), params)
            return int(cursor.fetchone()["n"])
    finally:
        connection.close()


def finish(drill: Drill, *, read_kafka: bool = True) -> None:
    check_consistency(drill.report, drill.target.settings, drill.client,
                      drill.config.drill_drain_timeout_seconds, read_kafka=read_kafka)


# --- breaker ------------------------------------------------------------------------------------------

def drill_breaker(drill: Drill) -> None:
    """The seed's 9-step circuit-breaker scenario, plus what the outbox promises afterwards."""
    report, client, config, target = drill.report, drill.client, drill.config, drill.target
    open_drill(drill)
    warm_up(drill)
    state = breaker_state(drill)
    report.check("initial state", "kafka-publisher breaker is CLOSED", state == CLOSED, state)
    prepare_breaker_window(drill)

    warm = [client.authorize(drill.merchant) for _ in range(config.drill_warmup_requests)]
    report.check(f"{len(warm)} normal authorizes", "all 200 REQUESTED",
                 all(a.status == 200 and a.body.get("status") == "REQUESTED" for a in warm),
                 f"statuses {_statuses(warm)}; latency {_latencies(warm)}")
    warm_ids = [a.body["paymentId"] for a in warm]
    left, took = poll(lambda: unpublished(drill, warm_ids), lambda n: n == 0, 10)
    report.check("normal path publishes at once",
                 "their outbox rows are published (by ingest, before the relay)",
                 left == 0, f"{left} unpublished after {took:.1f} s")

    clean = target.stop("kafka")
    drill.cleanups.append(("start the broker again", lambda: target.start("kafka")))
    kafka = target.component("kafka")
    is_open, _ = poll(lambda: port_open(kafka.host, kafka.port), lambda o: not o, 5)
    report.check("broker stopped (supervisor, SIGTERM)", "kafka stopped cleanly and its port is closed",
                 clean and not is_open, f"clean={clean}, port {kafka.port} closed={not is_open}")

    outage = [client.authorize(drill.merchant) for _ in range(config.drill_outage_requests)]
    report.check(f"{len(outage)} requests during the outage", "all 200: committed with their outbox rows",
                 all(a.status == 200 for a in outage),
                 f"statuses {_statuses(outage)}; latency {_latencies(outage)}")
    outage_ids = [a.body["paymentId"] for a in outage]
    waiting = unpublished(drill, outage_ids)
    report.check("outage payments wait in the outbox", "their outbox rows are unpublished",
                 waiting == len(outage_ids), f"{waiting}/{len(outage_ids)} unpublished")

    state, took = poll(lambda: breaker_state(drill), lambda s: s in (OPEN, HALF_OPEN), 10)
    report.check("breaker opened", "state is OPEN or HALF_OPEN", state in (OPEN, HALF_OPEN),
                 f"{state} after {took:.1f} s; snapshot {client.breaker().body}")
    during = client.authorize(drill.merchant)
    report.check("request while OPEN", "200 (the payment is committed, publishing is left to the relay)",
                 during.status == 200, f"HTTP {during.status} in {during.seconds * 1000:.0f} ms")

    state_name = target.start("kafka")
    drill.cleanups.pop()
    report.check("broker started again (supervisor)", "kafka started, healthy, topics provisioned",
                 state_name in ("started", "running"), state_name)

    wait = config.drill_breaker_wait_seconds or drill.parameter(WAIT_PARAMETER)
    half_open = drill.parameter(HALF_OPEN_PARAMETER)
    bound = wait + half_open + config.drill_recovery_slack_seconds
    recovery: list[Answer] = []

    def recover() -> str:
        recovery.append(client.authorize(drill.merchant))
        return breaker_state(drill)

    state, took = poll(recover, lambda s: s == CLOSED, bound, interval=1.0)
    report.check("recovery", f"authorizes until CLOSED within wait {wait:g} s + half-open {half_open:g} s"
                 f" + slack {config.drill_recovery_slack_seconds:g} s = {bound:g} s; every one 200",
                 state == CLOSED and all(a.status == 200 for a in recovery),
                 f"{state} after {took:.1f} s and {len(recovery)} request(s); statuses {_statuses(recovery)}")
    time.sleep(0.5)
    state = breaker_state(drill)
    report.check("final state", "breaker is CLOSED", state == CLOSED, state)

    moved = []
    for payment_id in outage_ids[:2]:
        moved.append(client.capture(drill.merchant, payment_id))
    moved.append(client.refund(drill.merchant, outage_ids[0]))
    report.check("capture and refund after recovery", "200 COMPLETED, COMPLETED, REFUNDED",
                 [(a.status, a.body.get("status")) for a in moved]
                 == [(200, "COMPLETED"), (200, "COMPLETED"), (200, "REFUNDED")],
                 f"statuses {_statuses(moved)}; latency {_latencies(moved)}")
    finish(drill)


# --- redis ----------------------------------------------------------------------------------------------

def drill_redis(drill: Drill) -> None:
    """Redis stopped: the rate limiter fails open, the breaker falls back to a local one, no 5xx."""
    report, client, config, target = drill.report, drill.client, drill.config, drill.target
    open_drill(drill)
    before = [client.authorize(drill.merchant) for _ in range(3)]
    snapshot = client.breaker().body
    report.check("baseline", "3 authorizes 200; breaker state kept in Redis",
                 all(a.status == 200 for a in before) and snapshot.get("storage") == "redis",
                 f"statuses {_statuses(before)}; breaker storage {snapshot.get('storage')}")
    report.info("rate-limit headers with Redis up",
                {k: v for k, v in before[-1].headers.items() if k.startswith("x-ratelimit")} or "none")

    clean = target.stop("redis")
    drill.cleanups.append(("start Redis again", lambda: target.start("redis")))
    redis = target.component("redis")
    report.check("Redis stopped (supervisor, SIGTERM)", "stopped cleanly, port closed",
                 clean and not port_open(redis.host, redis.port), f"clean={clean}")

    answers: list[Answer] = []
    deadline = time.monotonic() + config.drill_outage_seconds
    while time.monotonic() < deadline:
        authorized = client.authorize(drill.merchant)
        answers.append(authorized)
        if authorized.ok:
            answers.append(client.capture(drill.merchant, authorized.body["paymentId"]))
            answers.append(client.refund(drill.merchant, authorized.body["paymentId"]))
    report.check("traffic during the outage", "authorize/capture/refund all 200 (no 5xx, no 429)",
                 bool(answers) and all(a.status == 200 for a in answers),
                 f"{len(answers)} requests in {config.drill_outage_seconds:g} s; "
                 f"statuses {sorted(set(a.status for a in answers))}; latency {_latencies(answers)}")
    snapshot = client.breaker()
    report.check("breaker falls back locally", "GET breaker 200 with storage local-fallback",
                 snapshot.ok and snapshot.body.get("storage") == "local-fallback",
                 f"HTTP {snapshot.status}: {snapshot.body}")

    state = target.start("redis")
    drill.cleanups.pop()
    report.check("Redis started again (supervisor)", "started and healthy",
                 state in ("started", "running"), state)
    bound = 5.0 + config.drill_recovery_slack_seconds
    recovery: list[Answer] = []

    def storage() -> str:
        recovery.append(client.authorize(drill.merchant))
        return str(client.breaker().body.get("storage"))

    found, took = poll(storage, lambda s: s == "redis", bound, interval=1.0)
    report.check("breaker back on Redis", f"storage redis within {bound:g} s; every request 200",
                 found == "redis" and all(a.status == 200 for a in recovery),
                 f"{found} after {took:.1f} s, {len(recovery)} request(s) {_statuses(recovery)}")
    report.info("rate-limit headers with Redis back",
                {k: v for k, v in recovery[-1].headers.items() if k.startswith("x-ratelimit")} or "none")
    finish(drill)


# --- database -------------------------------------------------------------------------------------------

def drill_database(drill: Drill) -> None:
    """MariaDB stopped: 503 SERVICE_UNAVAILABLE, nothing half-written, recovery without restarts."""
    report, client, config, target = drill.report, drill.client, drill.config, drill.target
    open_drill(drill)
    before = [client.authorize(drill.merchant) for _ in range(3)]
    report.check("baseline", "3 authorizes 200", all(a.status == 200 for a in before), _statuses(before))
    hosts = {h.name: target.pid(h.name) for h in target.hosts("INGEST-SERVICE")}

    clean = target.stop("mariadb")
    drill.cleanups.append(("start MariaDB again", lambda: target.start("mariadb")))
    report.check("MariaDB stopped (supervisor, SIGTERM)", "stopped cleanly", clean, f"clean={clean}")

    failed_keys: list[str] = []
    answers: list[Answer] = []
    deadline = time.monotonic() + config.drill_outage_seconds
    while time.monotonic() < deadline:
        key = f"drill-db-{uuid.uuid4().hex}"
        answers.append(client.authorize(drill.merchant, key))
        failed_keys.append(key)
    answers.append(client.capture(drill.merchant, before[0].body["paymentId"]))
    codes = {(a.status, a.body.get("code")) for a in answers}
    report.check("requests during the outage", "every authorize and capture: 503 SERVICE_UNAVAILABLE",
                 codes == {(503, "SERVICE_UNAVAILABLE")},
                 f"{len(answers)} requests; answers {sorted(codes, key=str)}; "
                 f"max {max(a.seconds for a in answers):.2f} s")
    breaker = client.breaker()
    report.check("what does not need the database still works", "GET /api/circuit-breaker/... = 200",
                 breaker.ok, f"HTTP {breaker.status}")

    state = target.start("mariadb")
    drill.cleanups.pop()
    report.check("MariaDB started again (supervisor)", "started, healthy, migrations current",
                 state in ("started", "running"), state)
    bound = config.drill_recovery_slack_seconds + 10
    answer, took = poll(lambda: client.authorize(drill.merchant), lambda a: a.status == 200, bound,
                        interval=0.5)
    report.check("recovery", f"an authorize answers 200 within {bound:g} s", answer.status == 200,
                 f"HTTP {answer.status} after {took:.1f} s")
    after = {h.name: target.pid(h.name) for h in target.hosts("INGEST-SERVICE")}
    report.check("no function restarted", "the INGEST-SERVICE hosts kept their pids", after == hosts,
                 f"before {hosts}, after {after}")

    connection = connect(target.settings)
    try:
        marks, params = in_list(failed_keys)
        with connection.cursor() as cursor:
            counts = {}
            for table in ("payment", "idempotency_record"):
                cursor.execute(expand_in(f"SELECT COUNT(*) AS n FROM {table} WHERE merchant_id = %s"  # noqa: S608
                                         " AND idempotency_key IN ($)", marks), (drill.merchant, *params))
                counts[table] = int(cursor.fetchone()["n"])
    finally:
        connection.close()
    report.check("nothing half-written", "no payment or idempotency row for any request answered 503",
                 not any(counts.values()), f"{counts} for {len(failed_keys)} failed keys")
    replay = client.authorize(drill.merchant, failed_keys[0])
    report.check("a failed request can be retried",
                 "the same idempotency key now answers 200 (no stale claim)",
                 replay.status == 200 and replay.headers.get("idempotent-replayed") != "true",
                 f"HTTP {replay.status} {replay.body.get('status') or replay.body.get('code')}")
    captured = client.capture(drill.merchant, before[0].body["paymentId"])
    report.check("capture after recovery", "200 COMPLETED", captured.status == 200, _statuses([captured]))
    finish(drill)


# --- host -----------------------------------------------------------------------------------------------

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
                 all(a.status == 200 for a in after), _statuses(after))
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


# --- consumer -------------------------------------------------------------------------------------------

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
                 f"statuses {_statuses(first)}; authorized_total {total} (want {want}) after {took:.1f} s")

    lock = connect(settings)
    drill.cleanups.append(("release the projection row lock", lock.close))
    with lock.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("SELECT authorized_total FROM merchant_balance WHERE merchant_id = %s"
                       " AND currency = 'KRW' FOR UPDATE", (drill.merchant,))
    errors_before = _poller_errors(drill, BALANCE_FUNCTION)
    batch = [client.authorize(drill.merchant) for _ in range(10)]
    report.check("10 authorizes while the projection row is locked", "all 200", all(a.ok for a in batch),
                 _statuses(batch))

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
