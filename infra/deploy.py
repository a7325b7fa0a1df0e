"""``payfn deploy --env NAME``: the one template, deployed with CloudFormation.

The third way of running payfn (SPEC: "one template, three targets"). The steps are
those of ``sam build`` + ``sam package`` + ``sam deploy``, done here so that they also
work against an endpoint that is not AWS:

1. ``sam build`` (no container) into a build folder;
2. package: each built function folder and the layer are zipped, named by the SHA-256
   of their content and uploaded to the artifact bucket once; ``CodeUri``/``ContentUri``
   become ``s3://`` locations. Equal content gives an equal key, so a redeploy of
   unchanged code uploads nothing and CloudFormation sees no change;
3. for an endpoint that does not run the ``AWS::Serverless-2016-10-31`` transform
   itself (moto), the template is expanded here with ``aws-sam-translator``, the
   library CloudFormation's own transform is built on;
4. create or update the stack, wait for it, and print its outputs; a failure is
   reported with the failed resources' status reasons.

Environments come from ``samconfig.toml`` (``local`` is its ``default`` section, so
``sam deploy`` and ``payfn deploy`` read the same values): ``global`` and ``deploy``
parameters as SAM reads them, plus a ``payfn_deploy`` section SAM ignores, with
``endpoint_url`` (``"local"`` = the stack's AWS emulator, ``PAYFN_AWS_ENDPOINT_URL``),
``stack_name`` (wins over SAM's), ``expand_transform``, ``emulator`` (whose known gaps to leave out, see
:data:`EMULATOR_GAPS`) and ``create_bucket``.

Every failure a user can meet (no credentials, a missing bucket, an unreachable
endpoint, a failed resource) is a :class:`DeployError` with a readable message;
``payfn deploy`` prints it and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.parsers import ResponseParserError
from payfn_shared.config import ConfigError, load_settings

from infra.runtime.functions import template_parameters
from infra.template import REPO_ROOT, TEMPLATE_PATH

SAMCONFIG_PATH = REPO_ROOT / "samconfig.toml"
#: ``payfn deploy --env local`` reads samconfig's ``default`` environment, the one ``sam`` uses by default.
SAMCONFIG_ALIASES = {"local": "default"}
LOCAL_ENDPOINT = "local"
#: Credentials for an emulator endpoint: moto and LocalStack accept any, and using
#: fixed ones keeps a developer's real AWS credentials from ever being sent there.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "payfn-local", "aws_secret_access_key": "payfn-local"}
#: CloudFormation's limit on an inline TemplateBody; larger templates go through S3.
TEMPLATE_BODY_LIMIT = 51_200
SUCCESS = ("CREATE_COMPLETE", "UPDATE_COMPLETE")
#: States a stack cannot be updated from: a failed first creation must be deleted first.
DEAD = ("ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED")
NO_CHANGE = "No updates are to be performed"


class DeployError(RuntimeError):
    """A deployment could not be done; the message says why and, where it can, what to do."""


@dataclass(frozen=True)
class Gap:
    """A resource an emulator's CloudFormation cannot create, left out of that target."""

    resource_type: str
    reason: str
    applies: Callable[[Mapping[str, Any]], bool] = lambda resource: True


#: What each emulator's CloudFormation does not emulate (moto 5.2). The rest deploys.
EMULATOR_GAPS: dict[str, tuple[Gap, ...]] = {
    "moto": (
        Gap("AWS::Lambda::EventSourceMapping",
            "moto creates event source mappings only from an EventSourceArn: "
            "self-managed Kafka is not emulated",
            lambda resource: "SelfManagedEventSource" in resource.get("Properties", {})),
        Gap("AWS::ApiGateway::Deployment",
            "moto's CloudFormation ignores a RestApi's OpenAPI Body, so the API has no methods to deploy"),
        Gap("AWS::ApiGateway::Stage", "no Deployment to stage (see AWS::ApiGateway::Deployment)"),
    ),
}
#: Resource types whose ``Ref`` an emulator does not resolve to the real value: outputs
#: that are just such a ``Ref`` are left out there instead of printing a wrong value.
EMULATOR_UNRESOLVED_REFS: dict[str, dict[str, str]] = {
    "moto": {"AWS::Lambda::LayerVersion": "moto's Ref of a layer version is not its ARN"},
}


@dataclass(frozen=True)
class Target:
    """Where and how one environment deploys (samconfig.toml + command-line overrides)."""

    env: str
    stack_name: str
    region: str
    endpoint_url: str | None
    s3_bucket: str | None
    resolve_s3: bool
    create_bucket: bool
    expand_transform: bool
    emulator: str | None
    capabilities: tuple[str, ...]
    parameters: dict[str, str] = field(default_factory=dict)
    #: Parameters named on the command line: a typo there is an error, while the
    #: local stack's addresses are passed only to a template that declares them.
    explicit: frozenset[str] = frozenset()

    @property
    def where(self) -> str:
        return self.endpoint_url or f"AWS ({self.region})"


@dataclass
class DeployResult:
    """What a deployment did: the final stack status, its outputs and what was left out."""

    stack_name: str
    status: str
    outputs: dict[str, str]
    uploaded: int
    skipped: list[tuple[str, str, str]]


def parse_parameter_overrides(text: str) -> dict[str, str]:
    """``"A=1 B='x y'"`` → ``{"A": "1", "B": "x y"}``, as ``sam deploy --parameter-overrides`` reads it."""
    values: dict[str, str] = {}
    for token in shlex.split(text):
        name, sep, value = token.partition("=")
        if not sep or not name:
            raise DeployError(f"parameter override {token!r} is not NAME=VALUE")
        values[name] = value
    return values


def load_target(env: str, *, config_path: Path = SAMCONFIG_PATH, stack_name: str | None = None,
                endpoint_url: str | None = None, s3_bucket: str | None = None,
                overrides: Mapping[str, str] | None = None) -> Target:
    """The deployment target of ``env``, with command-line values winning over samconfig's."""
    try:
        config = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeployError(f"cannot read {config_path}: {exc}") from None
    section_name = SAMCONFIG_ALIASES.get(env, env) if env not in config else env
    section = config.get(section_name)
    if not isinstance(section, dict):
        aliases = {section: alias for alias, section in SAMCONFIG_ALIASES.items()}
        known = sorted(aliases.get(name, name) for name, value in config.items() if isinstance(value, dict))
        raise DeployError(f"no environment {env!r} in {config_path.name} (known: {', '.join(known)})")

    def parameters(command: str) -> dict[str, Any]:
        return dict(section.get(command, {}).get("parameters", {}))

    deploy = {**parameters("global"), **parameters("deploy")}
    payfn = parameters("payfn_deploy")
    configured = payfn.get("endpoint_url")
    values = parse_parameter_overrides(str(deploy.get("parameter_overrides", "")))
    if configured == LOCAL_ENDPOINT:
        # The functions deployed next to the local stack use the local stack's addresses
        # and generated passwords, exactly as the local function hosts do.
        settings = load_settings()
        configured = settings.aws_endpoint_url
        values.update(template_parameters(settings))
    endpoint = endpoint_url or configured
    values.update(overrides or {})
    return Target(
        env=env,
        stack_name=stack_name or str(payfn.get("stack_name") or deploy.get("stack_name", "payfn")),
        region=str(deploy.get("region", "us-east-1")),
        endpoint_url=endpoint or None,
        s3_bucket=s3_bucket or deploy.get("s3_bucket"),
        resolve_s3=bool(deploy.get("resolve_s3", False)) and not s3_bucket,
        create_bucket=bool(payfn.get("create_bucket", False)),
        expand_transform=bool(payfn.get("expand_transform", False)),
        emulator=payfn.get("emulator") or None,
        capabilities=tuple(str(deploy.get("capabilities", "CAPABILITY_IAM")).split()),
        parameters=values,
        explicit=frozenset(overrides or {}),
    )


class Clients:
    """boto3 clients for one target, with credentials checked before the first call."""

    def __init__(self, target: Target) -> None:
        credentials = EMULATOR_CREDENTIALS if target.endpoint_url else {}
        self.session = boto3.session.Session(region_name=target.region, **credentials)
        if self.session.get_credentials() is None:
            raise DeployError(
                f"no AWS credentials for {target.where}: set AWS_PROFILE (after `aws configure` or "
                "`aws sso login`) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        self.endpoint_url = target.endpoint_url
        self._clients: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, endpoint_url=self.endpoint_url,
                config=Config(connect_timeout=5, read_timeout=300, retries={"max_attempts": 2}))
        return self._clients[service]


def describe_aws_error(exc: Exception, where: str) -> str:
    """One readable line for a botocore failure (credentials, endpoint, refused call)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "Error"), error.get("Message", str(exc))
        if code in ("InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException",
                    "ExpiredToken", "ExpiredTokenException", "AccessDenied", "AccessDeniedException",
                    "403", "Forbidden"):
            return f"{where} refused the credentials ({code}): {message}"
        return f"{code}: {message}"
    if isinstance(exc, NoCredentialsError):
        return f"no AWS credentials for {where}"
    if isinstance(exc, ResponseParserError):
        # Emulators answer some failures in another protocol's format (JSON for XML):
        # the message is in there; an HTML page is the emulator's own crash.
        text = str(exc)
        found = re.search(r'"__type": "([^"]+)", "message": "([^"]*)"', text)
        if found:
            return f"{found.group(1)}: {found.group(2)}"
        if "Internal Server Error" in text:
            return f"{where} failed with an internal error (HTTP 500); its log says why"
    return f"{where}: {exc}"


def sam_build(template: Path, build_dir: Path, cache_dir: Path) -> Path:
    """``sam build`` without a container; returns the built template."""
    sam = Path(sys.executable).parent / "sam"
    argv = [str(sam), "build", "--template-file", str(template), "--build-dir", str(build_dir),
            "--cached", "--cache-dir", str(cache_dir)]
    env = dict(os.environ, SAM_CLI_TELEMETRY="0")
    try:
        result = subprocess.run(argv, cwd=template.parent, env=env, capture_output=True, text=True,
                                timeout=900, check=False)
    except FileNotFoundError:
        raise DeployError(f"sam not found at {sam}: run `make deps` (aws-sam-cli is pinned)") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise DeployError(f"sam build failed (exit {result.returncode}):\n{tail}")
    return build_dir / "template.yaml"


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def content_hash(folder: Path) -> str:
    """SHA-256 over each file's relative path, mode and bytes: the folder's identity.

    Timestamps are left out, so a rebuild of unchanged code keeps its S3 key: nothing
    is uploaded and CloudFormation sees no change to the function.
    """
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(f"{os.access(path, os.X_OK)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def zip_folder(folder: Path) -> bytes:
    """A zip of ``folder`` as Lambda unpacks it into ``/var/task`` or ``/opt``.

    Files keep their modification times and the ``__pycache__`` that ``sam build``
    compiled: Python trusts a ``.pyc`` only when its recorded source mtime matches, and
    ``/opt`` is read-only on Lambda, so without them every cold start would compile
    the whole layer again.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in _files(folder):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def ensure_bucket(clients: Clients, target: Target) -> str:
    """The artifact bucket: checked, created on emulators, or payfn's own for ``resolve_s3``."""
    s3 = clients("s3")
    bucket = target.s3_bucket
    create = target.create_bucket
    if target.resolve_s3:
        account = clients("sts").get_caller_identity()["Account"]
        bucket, create = f"payfn-artifacts-{account}-{target.region}", True
    if not bucket:
        raise DeployError(f"no artifact bucket for --env {target.env}: set s3_bucket or resolve_s3 in "
                          "samconfig.toml, or pass --s3-bucket")
    try:
        s3.head_bucket(Bucket=bucket)
        return bucket
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    if not create:
        raise DeployError(f"S3 bucket {bucket!r} does not exist at {target.where}: create it "
                          f"(aws s3 mb s3://{bucket}) or set resolve_s3 = true in samconfig.toml")
    request: dict[str, Any] = {"Bucket": bucket}
    if target.region != "us-east-1":
        request["CreateBucketConfiguration"] = {"LocationConstraint": target.region}
    s3.create_bucket(**request)
    return bucket


def package(template: dict[str, Any], build_dir: Path, clients: Clients, bucket: str, prefix: str) -> int:
    """Upload each function's and layer's built folder; point the template at S3. Returns uploads."""
    s3 = clients("s3")
    uploaded = 0
    for logical_id, resource in template.get("Resources", {}).items():
        key_name = {"AWS::Serverless::Function": "CodeUri",
                    "AWS::Serverless::LayerVersion": "ContentUri"}.get(resource.get("Type", ""))
        properties = resource.get("Properties", {})
        location = properties.get(key_name) if key_name else None
        if not isinstance(location, str) or location.startswith("s3://"):
            continue
        folder = (build_dir / location).resolve()
        if not folder.is_dir():
            raise DeployError(f"{logical_id}: built folder {folder} is missing (did sam build run?)")
        key = f"{prefix}/{content_hash(folder)}.zip"
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError:
            s3.put_object(Bucket=bucket, Key=key, Body=zip_folder(folder))
            uploaded += 1
        properties[key_name] = f"s3://{bucket}/{key}"
    return uploaded


def expand(template: dict[str, Any], parameters: Mapping[str, str], region: str) -> dict[str, Any]:
    """Run the SAM transform locally (``aws-sam-translator``), as CloudFormation would.

    No managed-policy names are used in the template (policy templates and ARNs only),
    so the translator gets an empty policy map and never calls IAM. NoEcho parameters
    are not handed to it: it has no need for secrets.
    """
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    logging.getLogger("samtranslator").setLevel(logging.ERROR)
    secret = {name for name, spec in template.get("Parameters", {}).items() if spec.get("NoEcho")}
    values = {name: value for name, value in parameters.items() if name not in secret}
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    try:
        expanded: dict[str, Any] = translator.translate(template, parameter_values=values,
                                                        get_managed_policy_map=dict)
    except InvalidDocumentException as exc:
        causes = "; ".join(str(cause.message) for cause in exc.causes) or str(exc)
        raise DeployError(f"the SAM transform rejected the template: {causes}") from None
    except Exception as exc:  # the translator's own bugs surface as any exception type
        raise DeployError(f"the SAM transform failed: {type(exc).__name__}: {exc}") from None
    return expanded


def _mentions(value: Any, logical_ids: set[str]) -> bool:
    """Whether ``value`` refers (Ref, GetAtt, Sub, DependsOn) to any of ``logical_ids``."""
    if isinstance(value, str):
        return value in logical_ids or any(f"${{{lid}}}" in value or f"${{{lid}." in value
                                           for lid in logical_ids)
    if isinstance(value, list):
        return any(_mentions(item, logical_ids) for item in value)
    if isinstance(value, dict):
        return any(_mentions(item, logical_ids) for item in value.values())
    return False


def leave_out_gaps(template: dict[str, Any], emulator: str | None) -> list[tuple[str, str, str]]:
    """Remove what ``emulator`` cannot create; returns (logical id, type, reason) of each."""
    gaps = EMULATOR_GAPS.get(emulator or "", ())
    resources = template.get("Resources", {})
    skipped = []
    for logical_id, resource in list(resources.items()):
        for gap in gaps:
            if resource.get("Type") == gap.resource_type and gap.applies(resource):
                skipped.append((logical_id, gap.resource_type, gap.reason))
                del resources[logical_id]
                break
    removed = {logical_id for logical_id, _, _ in skipped}
    for resource in resources.values():
        depends = resource.get("DependsOn")
        if isinstance(depends, list):
            resource["DependsOn"] = [name for name in depends if name not in removed]
        elif depends in removed:
            del resource["DependsOn"]
    unresolved = EMULATOR_UNRESOLVED_REFS.get(emulator or "", {})
    outputs = template.get("Outputs", {})
    for name, output in list(outputs.items()):
        value = output.get("Value")
        referenced = resources.get(value.get("Ref", ""), {}) if isinstance(value, dict) else {}
        if _mentions(value, removed):
            reason = "refers to a resource left out"
        elif referenced.get("Type") in unresolved:
            reason = unresolved[referenced["Type"]]
        else:
            continue
        skipped.append((name, "Output", reason))
        del outputs[name]
    return skipped


def stack_status(cloudformation: Any, stack_name: str) -> dict[str, Any] | None:
    """The stack's description, or None when there is none."""
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        if "does not exist" in exc.response.get("Error", {}).get("Message", ""):
            return None
        raise
    return stacks[0] if stacks else None


def failure_reasons(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """``LogicalId (Type): reason`` of each failed resource event, oldest first, without repeats."""
    reasons: list[str] = []
    for event in sorted(events, key=lambda e: str(e.get("Timestamp", ""))):
        if not str(event.get("ResourceStatus", "")).endswith("_FAILED"):
            continue
        line = (f"{event.get('LogicalResourceId')} ({event.get('ResourceType')}): "
                f"{event.get('ResourceStatusReason') or event.get('ResourceStatus')}")
        if line not in reasons:
            reasons.append(line)
    return reasons


def wait_for_stack(cloudformation: Any, stack_name: str, timeout: float = 3600.0,
                   poll: float = 2.0) -> dict[str, Any]:
    """Poll until the stack leaves its ``*_IN_PROGRESS`` state; returns its description."""
    deadline = time.monotonic() + timeout
    while True:
        stack = stack_status(cloudformation, stack_name)
        if stack is None:
            raise DeployError(f"stack {stack_name} disappeared while deploying")
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        if time.monotonic() > deadline:
            raise DeployError(f"stack {stack_name} still {stack['StackStatus']} after {timeout:.0f} s")
        time.sleep(poll)


def _template_argument(clients: Clients, target: Target, bucket: str, body: str) -> dict[str, str]:
    """Inline when small enough, else uploaded next to the artifacts.

    The URL is the virtual-hosted S3 form, which CloudFormation reads with the
    caller's permissions and which emulators map to their own S3.
    """
    if len(body.encode("utf-8")) <= TEMPLATE_BODY_LIMIT:
        return {"TemplateBody": body}
    key = f"{target.stack_name}/{hashlib.sha256(body.encode()).hexdigest()}.template"
    clients("s3").put_object(Bucket=bucket, Key=key, Body=body.encode("utf-8"))
    return {"TemplateURL": f"https://{bucket}.s3.{target.region}.amazonaws.com/{key}"}


def create_or_update(clients: Clients, target: Target, template: dict[str, Any], bucket: str) -> str:
    """Create the stack, or update it (an unchanged template is a no-op); returns the final status."""
    cloudformation = clients("cloudformation")
    declared = template.get("Parameters", {})
    unknown = sorted(target.explicit - set(declared))
    if unknown:
        raise DeployError(f"the template has no parameter(s) {', '.join(unknown)}")
    request: dict[str, Any] = {
        "StackName": target.stack_name,
        "Capabilities": list(target.capabilities),
        "Parameters": [{"ParameterKey": key, "ParameterValue": value}
                       for key, value in sorted(target.parameters.items()) if key in declared],
        "Tags": [{"Key": "payfn:env", "Value": target.env}],
        **_template_argument(clients, target, bucket, json.dumps(template)),
    }
    existing = stack_status(cloudformation, target.stack_name)
    if existing is not None and existing["StackStatus"] in DEAD:
        # CloudFormation cannot update a stack whose first creation rolled back.
        cloudformation.delete_stack(StackName=target.stack_name)
        deadline = time.monotonic() + 900
        while (stack := stack_status(cloudformation, target.stack_name)) is not None \
                and stack["StackStatus"] != "DELETE_COMPLETE":
            if time.monotonic() > deadline:
                raise DeployError(f"stack {target.stack_name} could not be deleted after its failed creation")
            time.sleep(2)
        existing = None
    try:
        if existing is None:
            cloudformation.create_stack(**request)
        else:
            cloudformation.update_stack(**request)
    except (ClientError, BotoCoreError, ResponseParserError) as exc:
        if isinstance(exc, ClientError) and NO_CHANGE in exc.response.get("Error", {}).get("Message", ""):
            return "NO_CHANGE"
        # AWS reports a failed resource through the stack's events (below); an emulator
        # that creates resources synchronously reports it here, as the call's error.
        raise DeployError(f"CloudFormation at {target.where} could not deploy stack {target.stack_name}: "
                          f"{describe_aws_error(exc, target.where)}") from None
    stack = wait_for_stack(cloudformation, target.stack_name)
    status = str(stack["StackStatus"])
    if status not in SUCCESS:
        events = cloudformation.describe_stack_events(StackName=target.stack_name)["StackEvents"]
        reasons = failure_reasons(events) or [str(stack.get("StackStatusReason") or "no reason given")]
        raise DeployError(f"stack {target.stack_name} ended {status}:\n  " + "\n  ".join(reasons))
    return status


def stack_outputs(clients: Clients, stack_name: str) -> dict[str, str]:
    """The stack's outputs as ``{key: value}``."""
    stack = stack_status(clients("cloudformation"), stack_name) or {}
    return {str(o["OutputKey"]): str(o.get("OutputValue", "")) for o in stack.get("Outputs") or []}


def deploy(target: Target, *, template_path: Path = TEMPLATE_PATH, build_dir: Path | None = None,
           cache_dir: Path | None = None, log: Callable[[str], None] = print) -> DeployResult:
    """Build, package, (expand,) create or update the stack of ``target``; see the module docstring."""
    from samtranslator.yaml_helper import yaml_parse

    clients = Clients(target)
    stack_dir = load_settings().stack_dir
    build_dir = build_dir or REPO_ROOT / stack_dir / "deploy" / target.stack_name / "build"
    cache_dir = cache_dir or REPO_ROOT / stack_dir / "sam-cache"
    try:
        bucket = ensure_bucket(clients, target)
        log(f"building {template_path.name} (sam build, no container) into {build_dir}")
        built = sam_build(template_path, build_dir, cache_dir)
        template: dict[str, Any] = yaml_parse(built.read_text(encoding="utf-8"))
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
