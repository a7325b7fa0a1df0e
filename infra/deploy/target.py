"""Where one environment deploys: ``samconfig.toml`` read as SAM reads it, and its AWS clients.

An environment's ``global`` and ``deploy`` parameters are SAM's (``local`` is the
``default`` section, so ``sam deploy`` and ``payfn deploy`` read the same values), plus a
``payfn_deploy`` section SAM ignores: ``endpoint_url`` (``"local"`` = the stack's AWS
emulator, ``PAYFN_AWS_ENDPOINT_URL``), ``stack_name`` (wins over SAM's),
``expand_transform``, ``emulator`` (whose known gaps to leave out, see
:data:`infra.deploy.transform.EMULATOR_GAPS`) and ``create_bucket``. Command-line values
win over samconfig's.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.parsers import ResponseParserError
from payfn_shared.platform.config import load_settings

from infra.runtime.functions import template_parameters
from infra.sam.template import REPO_ROOT

SAMCONFIG_PATH = REPO_ROOT / "samconfig.toml"
#: ``payfn deploy --env local`` reads samconfig's ``default`` environment, the one ``sam`` uses by default.
SAMCONFIG_ALIASES = {"local": "default"}
LOCAL_ENDPOINT = "local"
#: Credentials for an emulator endpoint: moto and LocalStack accept any, and using
#: fixed ones keeps a developer's real AWS credentials from ever being sent there.
EMULATOR_CREDENTIALS = {"aws_access_key_id": "payfn-local", "aws_secret_access_key": "payfn-local"}


class DeployError(RuntimeError):
    """A deployment could not be done; the message says why and, where it can, what to do."""


@dataclass(frozen=True)
class DeployTarget:
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
                overrides: Mapping[str, str] | None = None) -> DeployTarget:
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
    return DeployTarget(
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

    def __init__(self, target: DeployTarget) -> None:
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
