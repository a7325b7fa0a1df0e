"""The datastore drills: Redis or MariaDB stopped under traffic through the gateway.

Redis stopped: the rate limiter fails open and the breaker falls back to a local one,
no 5xx. MariaDB stopped: every request answers 503 SERVICE_UNAVAILABLE, nothing is
half-written, and the service recovers without a function restart.
"""

from __future__ import annotations

import time
import uuid

from infra.drills.client import Answer
from infra.drills.consistency import connect, expand_in, in_list
from infra.drills.steps import Drill, finish, latencies, open_drill, poll, statuses
from infra.stack.process import port_open


def drill_redis(drill: Drill) -> None:
    """Redis stopped: the rate limiter fails open, the breaker falls back to a local one, no 5xx."""
    report, client, config, target = drill.report, drill.client, drill.config, drill.target
    open_drill(drill)
    before = [client.authorize(drill.merchant) for _ in range(3)]
    snapshot = client.breaker().body
    report.check("baseline", "3 authorizes 200; breaker state kept in Redis",
                 all(a.status == 200 for a in before) and snapshot.get("storage") == "redis",
                 f"statuses {statuses(before)}; breaker storage {snapshot.get('storage')}")
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
                 f"statuses {sorted(set(a.status for a in answers))}; latency {latencies(answers)}")
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
                 f"{found} after {took:.1f} s, {len(recovery)} request(s) {statuses(recovery)}")
    report.info("rate-limit headers with Redis back",
                {k: v for k, v in recovery[-1].headers.items() if k.startswith("x-ratelimit")} or "none")
    finish(drill)


def drill_database(drill: Drill) -> None:
    """MariaDB stopped: 503 SERVICE_UNAVAILABLE, nothing half-written, recovery without restarts."""
    report, client, config, target = drill.report, drill.client, drill.config, drill.target
    open_drill(drill)
    before = [client.authorize(drill.merchant) for _ in range(3)]
    report.check("baseline", "3 authorizes 200", all(a.status == 200 for a in before), statuses(before))
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
    report.check("capture after recovery", "200 COMPLETED", captured.status == 200, statuses([captured]))
    finish(drill)
