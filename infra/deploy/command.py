"""``payfn deploy --env NAME``: build, package, (expand,) create or update, print the outputs.

Every failure a user can meet (no credentials, a missing bucket, an unreachable
endpoint, a failed resource) is a :class:`~infra.deploy.target.DeployError` with a
readable message; ``payfn deploy`` prints it and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError
from payfn_shared.platform.config import ConfigError, load_settings

from infra.deploy.artifacts import ensure_bucket, package, sam_build
from infra.deploy.cloudformation import create_or_update, stack_outputs
from infra.deploy.target import (
    Clients,
    DeployError,
    DeployTarget,
    describe_aws_error,
    load_target,
    parse_parameter_overrides,
)
from infra.deploy.transform import expand, leave_out_gaps
from infra.sam.template import REPO_ROOT, TEMPLATE_PATH, parse_template


@dataclass
class DeployResult:
    """What a deployment did: the final stack status, its outputs and what was left out."""

    stack_name: str
    status: str
    outputs: dict[str, str]
    uploaded: int
    skipped: list[tuple[str, str, str]]


def deploy(target: DeployTarget, *, template_path: Path = TEMPLATE_PATH, build_dir: Path | None = None,
           cache_dir: Path | None = None, log: Callable[[str], None] = print) -> DeployResult:
    """Build, package, (expand,) create or update the stack of ``target``: see :mod:`infra.deploy`."""
    clients = Clients(target)
    stack_dir = load_settings().stack_dir
    build_dir = build_dir or REPO_ROOT / stack_dir / "deploy" / target.stack_name / "build"
    cache_dir = cache_dir or REPO_ROOT / stack_dir / "sam-cache"
    try:
        bucket = ensure_bucket(clients, target)
        log(f"building {template_path.name} (sam build, no container) into {build_dir}")
        built = sam_build(template_path, build_dir, cache_dir)
        template = parse_template(built.read_text(encoding="utf-8"))
        uploaded = package(template, build_dir, clients, bucket, target.stack_name)
        log(f"packaged into s3://{bucket}/{target.stack_name}/ ({uploaded} new artifact(s))")
        skipped: list[tuple[str, str, str]] = []
        if target.expand_transform:
            template = expand(template, target.parameters, target.region)
            skipped = leave_out_gaps(template, target.emulator)
            for logical_id, resource_type, reason in skipped:
                log(f"  left out {logical_id} ({resource_type}): {reason}")
        log(f"deploying stack {target.stack_name} to {target.where}")
        status = create_or_update(clients, target, template, bucket)
        outputs = stack_outputs(clients, target.stack_name)
    except (ClientError, BotoCoreError, ResponseParserError) as exc:
        raise DeployError(describe_aws_error(exc, target.where)) from None
    return DeployResult(target.stack_name, status, outputs, uploaded, skipped)


def format_result(result: DeployResult) -> str:
    """The summary ``payfn deploy`` prints: the status and the stack's outputs."""
    status = "no changes (stack up to date)" if result.status == "NO_CHANGE" else result.status
    lines = [f"stack {result.stack_name}: {status}", "", "Outputs:"]
    width = max((len(key) for key in result.outputs), default=0)
    lines += [f"  {key.ljust(width)}  {value}" for key, value in sorted(result.outputs.items())]
    return "\n".join(lines)


def cmd_deploy(args: argparse.Namespace) -> int:
    """``payfn deploy``: a failure is one readable message and exit code 1, never a traceback."""
    try:
        overrides = parse_parameter_overrides(" ".join(args.parameter_overrides))
        target = load_target(args.env, stack_name=args.stack_name, endpoint_url=args.endpoint_url,
                             s3_bucket=args.s3_bucket, overrides=overrides)
        result = deploy(target, template_path=args.template_file.resolve(), build_dir=args.build_dir)
    except (DeployError, ConfigError) as error:
        print(f"payfn deploy: {error}", file=sys.stderr)
        return 1
    print(format_result(result))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The ``deploy`` subcommand of ``payfn``."""
    parser = sub.add_parser(
        "deploy", help="build, package and deploy the template with CloudFormation (samconfig.toml envs)",
        description="sam build (no container), package to S3, expand the SAM transform where the endpoint "
                    "does not, create or update the stack, print its outputs.")
    parser.add_argument("--env", default="local", help="samconfig.toml environment: local (default), "
                        "localstack, aws")
    parser.add_argument("--stack-name", help="override the environment's stack name")
    parser.add_argument("--endpoint-url", help="override the environment's AWS endpoint")
    parser.add_argument("--s3-bucket", help="artifact bucket (must exist unless the environment creates it)")
    parser.add_argument("--parameter-overrides", nargs="*", default=[], metavar="NAME=VALUE",
                        help="template parameters, winning over samconfig.toml's")
    parser.add_argument("--template-file", type=Path, default=TEMPLATE_PATH, help="SAM template")
    parser.add_argument("--build-dir", type=Path, help="sam build folder (default .stack/deploy/STACK/build)")
    parser.set_defaults(func=cmd_deploy)
