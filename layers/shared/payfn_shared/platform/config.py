"""Configuration from environment variables, with validated defaults.

One convention: every knob is a field of a frozen dataclass read by ``load_dataclass``
from ``<ENV_PREFIX><FIELD>`` (``ENV_PREFIX`` is ``PAYFN_`` unless the class declares
its group's, e.g. ``PAYFN_BREAKER_``). Processes load their configs in ``main``;
Lambda handlers at import (the init phase); a layer class takes its config as an
argument and loads the default only when given none. ``Settings`` holds the
addresses and credentials, so each is defined exactly once. Values come, in
increasing priority, from the defaults, a ``.env`` file (``PAYFN_ENV_FILE``), the
stack's credentials file (``PAYFN_CREDENTIALS_FILE``, default
``.stack/credentials.env``) and the process environment. Deployed, a database
password may come from Secrets Manager instead (``PAYFN_DB_PASSWORD_SECRET_ARN``,
``PAYFN_DB_READONLY_PASSWORD_SECRET_ARN``), read through Powertools' ``parameters``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

PREFIX = "PAYFN_"

#: Kafka's ``retention.ms`` value for "never delete".
KAFKA_KEEP_FOREVER = -1
#: The shortest topic retention accepted: a value in seconds mistaken for milliseconds
#: (21600 for 6 h) would otherwise delete events before a lagging consumer reads them.
MIN_KAFKA_TOPIC_RETENTION_MS = 60_000
#: The largest niceness Linux accepts.
MAX_NICE = 19


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``KEY=VALUE`` file (``#`` comments, optional quotes); missing file → {}."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return values
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


def merged_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Defaults < .env < credentials file < process environment (an empty file name: the default)."""
    env = dict(os.environ if environ is None else environ)
    merged: dict[str, str] = {}
    merged.update(read_env_file(Path(env.get("PAYFN_ENV_FILE", ".env"))))
    stack_dir = env.get("PAYFN_STACK_DIR", merged.get("PAYFN_STACK_DIR", ".stack"))
    credentials = (env.get("PAYFN_CREDENTIALS_FILE") or merged.get("PAYFN_CREDENTIALS_FILE")
                   or str(Path(stack_dir) / "credentials.env"))
    merged.update(read_env_file(Path(credentials)))
    merged.update(env)
    return merged


def _convert(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (bool, "bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    return raw


def load_dataclass(cls: type, env: Mapping[str, str] | None = None) -> Any:
    """Build a dataclass whose fields map to ``<cls.ENV_PREFIX><FIELD>`` variables.

    Every module with its own settings (breaker, rate limits, …) uses this, so the
    naming rule and the validation live in one place. An empty value means "not
    set" for numbers and flags, but is kept for text: a deployed function gets
    ``PAYFN_AWS_ENDPOINT_URL=""`` on purpose (talk to AWS itself, not an emulator).
    """
    source = merged_environment(env)
    prefix = getattr(cls, "ENV_PREFIX", PREFIX)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        name = prefix + f.name.upper()
        if name in source and (source[name] != "" or f.type in (str, "str")):
            kwargs[f.name] = _convert(name, source[name], f.type)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


@dataclass(frozen=True)
class Settings:
    """Addresses and credentials of every component (see README, "Ports")."""

    bind_host: str = "127.0.0.1"
    stack_dir: str = ".stack"
    #: The stack's generated secrets; empty: ``<stack_dir>/credentials.env``.
    credentials_file: str = ""

    db_host: str = "127.0.0.1"
    db_port: int = 3306
    db_name: str = "paydb"
    db_user: str = "payuser"
    db_password: str = ""
    db_password_secret_arn: str = ""
    db_readonly_user: str = "payreader"
    db_readonly_password: str = ""
    db_readonly_password_secret_arn: str = ""
    db_connect_timeout: float = 2.0
    #: Bounds of the read-only user that the local MariaDB enforces (``payfn up`` installs them).
    db_readonly_statement_seconds: int = 5
    db_readonly_transaction_seconds: int = 30
    db_readonly_max_connections: int = 32

    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 0
    redis_password: str = ""

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic_partitions: int = 3
    #: ``retention.ms`` of the topics payfn creates (see ``KafkaBroker.provision``).
    kafka_topic_retention_ms: int = 21_600_000

    aws_endpoint_url: str = "http://127.0.0.1:5000"
    aws_region: str = "us-east-1"

    prometheus_host: str = "127.0.0.1"
    prometheus_port: int = 9090

    registry_host: str = "127.0.0.1"
    registry_port: int = 8761
    registry_table: str = "payfn-registry"
    #: HTTP Basic account for registry writes (``infra.registry.accounts``); generated locally.
    registry_user: str = "payfn"
    registry_password: str = ""
    registry_accounts_file: str = ""
    #: The stack's token for the function hosts' Invoke API (``X-Payfn-Invoke-Token``); generated locally.
    invoke_token: str = ""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080

    #: Niceness added to the stack's background processes (see ``Component.background``).
    background_nice: int = 10

    def validate(self) -> None:
        for f in fields(self):
            if f.name.endswith("_port"):
                port = getattr(self, f.name)
                if not 0 < port < 65536:
                    raise ConfigError(f"{PREFIX}{f.name.upper()}={port} is not a TCP port")
        if min(self.db_readonly_statement_seconds, self.db_readonly_transaction_seconds,
               self.db_readonly_max_connections) < 1:
            raise ConfigError(f"{PREFIX}DB_READONLY_STATEMENT_SECONDS, _TRANSACTION_SECONDS and "
                              "_MAX_CONNECTIONS must be at least 1")
        retention = self.kafka_topic_retention_ms
        if retention != KAFKA_KEEP_FOREVER and retention < MIN_KAFKA_TOPIC_RETENTION_MS:
            raise ConfigError(
                f"{PREFIX}KAFKA_TOPIC_RETENTION_MS={retention} must be at least "
                f"{MIN_KAFKA_TOPIC_RETENTION_MS} (milliseconds) or {KAFKA_KEEP_FOREVER} (keep forever)"
            )
        if not 0 <= self.background_nice <= MAX_NICE:
            raise ConfigError(
                f"{PREFIX}BACKGROUND_NICE={self.background_nice} must be between 0 and {MAX_NICE}")

    @property
    def redis_url(self) -> str:
        auth = f":{self.redis_password}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    @property
    def registry_url(self) -> str:
        return f"http://{self.registry_host}:{self.registry_port}"

    @property
    def registry_credentials(self) -> tuple[str, str] | None:
        """(user, password) a registry client writes with; None when no password is configured."""
        return (self.registry_user, self.registry_password) if self.registry_password else None

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}:{self.gateway_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.prometheus_host}:{self.prometheus_port}"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The component addresses, from the environment (see module docstring)."""
    settings: Settings = load_dataclass(Settings, env)
    secrets = {"db_password": settings.db_password_secret_arn,
               "db_readonly_password": settings.db_readonly_password_secret_arn}
    wanted = {name: arn for name, arn in secrets.items() if arn}
    if not wanted:
        return settings
    # An explicitly empty PAYFN_AWS_ENDPOINT_URL (what a deployment to AWS passes)
    # means the real Secrets Manager, not the local emulator default.
    endpoint = merged_environment(env).get(f"{PREFIX}AWS_ENDPOINT_URL", settings.aws_endpoint_url)
    return replace(settings, **{name: read_secret_password(arn, endpoint, settings.aws_region)
                                for name, arn in wanted.items()})


#: How long a warm function reuses a password read from Secrets Manager before reading it again.
SECRET_MAX_AGE_SECONDS = 300


@lru_cache(maxsize=8)
def secrets_provider(endpoint_url: str, region: str) -> SecretsProvider:
    """The Powertools Secrets Manager provider (and its cache) of one endpoint and region.

    Powertools' module-level ``get_secret`` builds its client from the process's AWS
    variables only, while payfn's endpoint is ``PAYFN_AWS_ENDPOINT_URL`` and the region
    that of the secret's ARN: hence a provider per (endpoint, region) with its own client.
    """
    import boto3
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    client = boto3.client("secretsmanager", endpoint_url=endpoint_url or None, region_name=region)
    return SecretsProvider(boto3_client=client)


def read_secret_password(arn: str, endpoint_url: str, default_region: str) -> str:
    """The password stored in a Secrets Manager secret, cached for :data:`SECRET_MAX_AGE_SECONDS`.

    Cached because every invocation calls ``load_settings()`` and a Secrets Manager
    call per request would cost latency and money; a rotated password reaches a warm
    function within the cache's age. The secret is a plain string or a JSON object
    with ``password`` (the shape RDS-managed secrets have), so it is read untransformed
    and parsed here. boto3 and Powertools are imported lazily: only deployed
    functions with a secret need them (the Lambda runtime and the layer provide them).
    """
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    parts = arn.split(":")
    region = parts[3] if len(parts) > 3 and parts[3] else default_region
    try:
        text = secrets_provider(endpoint_url, region).get(arn, max_age=SECRET_MAX_AGE_SECONDS)
    except GetParameterError as exc:
        raise ConfigError(f"cannot read the database password from secret {arn}: {exc}") from None
    if not isinstance(text, str):
        raise ConfigError(f"secret {arn} has no SecretString (binary secrets are not passwords)")
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(document, dict):
        if "password" not in document:
            raise ConfigError(f"secret {arn} is a JSON object without a \"password\" key")
        return str(document["password"])
    return text
