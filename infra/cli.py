"""``payfn``: the command line of the local platform.

Every failure a user can cause or meet (a taken port, a component that does not
start, a bad setting) is printed as a readable message with exit code 1; a
traceback is a bug.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from payfn_shared.platform.config import ConfigError

from infra.deploy.command import add_parser as add_deploy_parser
from infra.drills.cli import add_parser as add_drill_parser
from infra.sam.template import REPO_ROOT, TemplateError, load_template
from infra.stack.component import StackError
from infra.stack.services import parse_scale, template_services
from infra.stack.supervisor import ComponentStatus, Supervisor


def _table(statuses: Sequence[ComponentStatus]) -> str:
    rows = [("COMPONENT", "ADDRESS", "STATE", "PID")]
    rows += [(s.name, s.address, s.state, str(s.pid or "-")) for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _urls(supervisor: Supervisor) -> str:
    s = supervisor.settings
    lines = [
        "",
        f"  payments API (gateway)  {s.gateway_url}/api/payments/authorize",
        f"  registry dashboard      {s.registry_url}/",
        f"  Prometheus              {s.prometheus_url}/",
        f"  MariaDB                 mysql://{s.db_user}@{s.db_host}:{s.db_port}/{s.db_name}",
        f"  Redis                   {s.redis_url}",
        f"  Kafka bootstrap         {s.kafka_bootstrap}",
        f"  AWS emulator (moto)     {s.aws_endpoint_url}",
    ]
    return "\n".join(lines)


def cmd_up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    scale = parse_scale(args.scale, template_services(load_template())) if args.scale else None
    supervisor = Supervisor(scale=scale)
    statuses = supervisor.up()
    print(_table(statuses))
    print(_urls(supervisor))
    for status in statuses:
        if status.state == "external":
            print(f"\n  note: {status.title} at {status.address} was already running; payfn uses it as is.")
    print(f"\nstack up in {time.monotonic() - started:.1f} s (data in {supervisor.paths.root})")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    supervisor = Supervisor()
    results = supervisor.down(args.names or None)
    for name, clean in results:
        print(f"stopped {name}" + ("" if clean else " (did not stop in time: killed)"))
    if not results:
        print("nothing of ours was running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    supervisor = Supervisor()
    statuses = supervisor.status()
    print(_table(statuses))
    return 0 if all(s.state in ("running", "external") for s in statuses) else 3


def cmd_logs(args: argparse.Namespace) -> int:
    supervisor = Supervisor()
    component = supervisor.component(args.name)
    log_file = supervisor.process(component).log_file
    if not log_file.exists():
        raise StackError(f"no log yet for {args.name} ({log_file})")
    argv = ["tail", "-n", str(args.lines)] + (["-F"] if args.follow else []) + [str(log_file)]
    try:
        return subprocess.call(argv)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payfn", description="payfn local serverless payment platform")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or reuse) every component, provision it, print the URLs")
    up.add_argument("--scale", action="append", default=[], metavar="SERVICE=N",
                    help="run N function hosts for SERVICE (remembered until changed)")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop every component payfn started")
    down.add_argument("names", nargs="*", help="only these components")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="print the component table")
    status.set_defaults(func=cmd_status)
    logs = sub.add_parser("logs", help="tail a component's log")
    logs.add_argument("name")
    logs.add_argument("-n", "--lines", type=int, default=50)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.set_defaults(func=cmd_logs)
    add_drill_parser(sub)
    add_deploy_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.chdir(REPO_ROOT)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (StackError, ConfigError, TemplateError) as error:
        print(f"payfn {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"payfn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
