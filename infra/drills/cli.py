"""The ``payfn drill NAME`` subcommand: run one drill, print its report, exit 0 (passed) or 1.

By default a drill runs against the stack of the current environment (``PAYFN_*``,
``.env``), like every other ``payfn`` command. ``--private`` starts a whole stack of
its own on free ports in a temporary folder and stops it afterwards, so a drill can
stop the broker or the database without disturbing anyone else's stack; with
``--fast`` that private stack also gets short breaker durations. ``--outage-seconds``
sets how long a timed drill keeps its component broken (the broker-outage drill's
60 s, the Redis/database/host drills' ``PAYFN_DRILL_OUTAGE_SECONDS``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from infra.drills import breaker, datastores, outage, processes
from infra.drills.client import GatewayClient
from infra.drills.config import FAST_BREAKER_PARAMETERS, DrillConfig, load_drill_config
from infra.drills.report import DrillFailed, Report
from infra.drills.steps import Drill
from infra.drills.target import DrillTarget, private_stack

DRILLS: dict[str, Callable[[Drill], None]] = {
    "breaker": breaker.drill_breaker,
    "redis": datastores.drill_redis,
    "database": datastores.drill_database,
    "host": processes.drill_host,
    "consumer": processes.drill_consumer,
    "broker-outage": outage.drill_broker_outage,
}
#: Function hosts a private stack runs per drill (the host drill kills one of two).
PRIVATE_SCALE: dict[str, dict[str, int]] = {"host": {"INGEST-SERVICE": 2}}


def run_drill(name: str, target: DrillTarget, config: DrillConfig) -> int:
    """Run one drill against ``target``; 0 when every step passed."""
    report = Report(name)
    client = GatewayClient(target.settings.gateway_url, timeout=config.drill_request_timeout_seconds)
    drill = Drill(target, config, report, client)
    try:
        DRILLS[name](drill)
    except DrillFailed:
        pass
    except Exception as error:
        report.soft_fail("unexpected error", "the drill runs to its end", f"{type(error).__name__}: {error}")
    finally:
        for what, cleanup in reversed(drill.cleanups):
            try:
                cleanup()
            except Exception as error:
                report.soft_fail("cleanup", what, f"{type(error).__name__}: {error}")
        client.close()
    print(report.summary(), flush=True)
    return 0 if report.passed else 1


def cmd_drill(args: argparse.Namespace) -> int:
    config = load_drill_config(fast=args.fast, outage_seconds=args.outage_seconds)
    if not args.private:
        return run_drill(args.name, DrillTarget(), config)
    parameters = FAST_BREAKER_PARAMETERS if args.fast else {}
    print(f"starting a private stack for drill {args.name} ...", flush=True)
    with private_stack(parameters, PRIVATE_SCALE.get(args.name)) as target:
        settings = target.settings
        print(f"private stack up (gateway {settings.gateway_url}, data {target.supervisor.paths.root})",
              flush=True)
        return run_drill(args.name, target, config)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    drill = sub.add_parser("drill", help="run a failure drill against the stack, through the gateway",
                           description="Failure drills: " + ", ".join(DRILLS) + ". Exit code 0 = passed.")
    drill.add_argument("name", choices=sorted(DRILLS))
    drill.add_argument("--fast", action="store_true",
                       help="short timings (CI); with --private also short breaker durations")
    drill.add_argument("--private", action="store_true",
                       help="run against a private stack on free ports (started and stopped by the drill)")
    drill.add_argument("--outage-seconds", type=float, default=None, metavar="S",
                       help="how long the component stays broken (broker-outage: 60 s, also with --fast)")
    drill.set_defaults(func=cmd_drill)

