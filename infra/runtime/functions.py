"""What one function needs to run locally, derived from the template.

``FunctionDefinition`` turns a template ``FunctionSpec`` into the concrete things an
execution environment needs: the code folder (Lambda's ``/var/task``), the layer
folders (``/opt/python``), the handler's module and attribute, and the environment
variables (Globals + the function's own + Lambda's reserved ones). It is pure
(no processes, no sockets) so that it is unit-tested on its own.

Paths in a template (``CodeUri``, a layer's ``ContentUri``) are relative to the
template file, as SAM reads them; for the project's ``template.yaml`` that is the
repository root, for a test template it is the test template's folder.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from payfn_shared.platform.config import Settings

from infra.runtime.logs import VERSION
from infra.sam.template import FunctionSpec, Template

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
PARAMETER_PREFIX = "PAYFN_PARAMETER_"
#: Template ``Metadata`` key of a function listing the scrape-time collectors its host
#: runs (``infra.runtime.collectors``), e.g. ``[circuitbreaker:kafka-publisher]``.
COLLECTORS_METADATA = "payfn:collectors"
API_EVENT_TYPES = ("Api", "HttpApi")


class FunctionConfigError(ValueError):
    """The template describes a function the local runtime cannot run (message says why)."""


def parse_handler(handler: str) -> tuple[str, str]:
    """``module.function`` → (module, function), as the Python runtime reads it.

    The runtime splits on the last dot and accepts ``/`` as a package separator
    (``pkg/app.handler`` is ``pkg.app``'s ``handler``).
    """
    module, sep, attribute = handler.rpartition(".")
    if not sep or not module or not attribute:
        raise FunctionConfigError(f"Handler {handler!r} is not of the form module.function")
    return module.replace("/", "."), attribute


def parameter_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Template parameters set with ``PAYFN_PARAMETER_<Name>``, by name (the one reader of them)."""
    source = os.environ if environ is None else environ
    return {key.removeprefix(PARAMETER_PREFIX): value
            for key, value in source.items() if key.startswith(PARAMETER_PREFIX)}


def template_parameters(settings: Settings) -> dict[str, str]:
    """Template parameter values that point the functions at the local stack.

    The template's defaults describe a generic deployment; locally the addresses
    come from ``payfn_shared.platform.config`` so that one setting moves every component.
    Any other parameter is set with ``PAYFN_PARAMETER_<Name>`` (e.g.
    ``PAYFN_PARAMETER_BreakerWaitDurationInOpenStateSeconds=2`` for a short drill),
    the local twin of ``sam deploy --parameter-overrides``.
    """
    return {
        "DbHost": settings.db_host,
        "DbPort": str(settings.db_port),
        "DbName": settings.db_name,
        "DbUser": settings.db_user,
        "DbPassword": settings.db_password,
        "DbReadonlyUser": settings.db_readonly_user,
        "DbReadonlyPassword": settings.db_readonly_password,
        "PrometheusHost": settings.prometheus_host,
        "PrometheusPort": str(settings.prometheus_port),
        "RedisHost": settings.redis_host,
        "RedisPort": str(settings.redis_port),
        "KafkaBootstrapServers": settings.kafka_bootstrap,
        "AwsEndpointUrl": settings.aws_endpoint_url,
        **parameter_overrides(),
    }


def layer_folder(content_uri: Path) -> Path:
    """The folder a layer contributes to ``sys.path``.

    A built layer keeps its packages under ``python/`` (which Lambda mounts as
    ``/opt/python``); a source layer such as ``layers/shared/`` has them at its root.
    """
    built = content_uri / "python"
    return built if built.is_dir() else content_uri


def new_log_stream_name(now: dt.datetime | None = None) -> str:
    """A log stream name in Lambda's shape: ``2024/01/31/[$LATEST]<32 hex>``, one per environment."""
    day = (now or dt.datetime.now(dt.UTC)).strftime("%Y/%m/%d")
    return f"{day}/[{VERSION}]{secrets.token_hex(16)}"


@dataclass(frozen=True)
class FunctionDefinition:
    """A template function resolved to local paths, names and variables."""

    logical_id: str
    function_name: str
    handler: str
    runtime: str
    code_dir: Path
    layer_dirs: tuple[Path, ...]
    timeout: float
    memory_size: int
    reserved_concurrency: int | None
    service: str | None
    variables: Mapping[str, str]
    api_paths: frozenset[str] = frozenset()
    collectors: tuple[str, ...] = ()

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def watched_dirs(self) -> tuple[Path, ...]:
        """The folders whose change means the function's code changed."""
        return (self.code_dir, *self.layer_dirs)

    @classmethod
    def from_spec(cls, spec: FunctionSpec, template: Template, template_dir: Path) -> FunctionDefinition:
        """Resolve ``spec`` against ``template`` (whose file is in ``template_dir``)."""
        if "Handler" not in spec.properties:
            raise FunctionConfigError(f"{spec.logical_id}: no Handler (container images are not run locally)")
        parse_handler(spec.handler)
        if not spec.runtime.startswith("python"):
            raise FunctionConfigError(f"{spec.logical_id}: runtime {spec.runtime} is not a Python runtime")
        layer_dirs = []
        for layer in spec.layers:
            resource = template.resources.get(layer)
            if resource is None or resource.get("Type") != "AWS::Serverless::LayerVersion":
                raise FunctionConfigError(f"{spec.logical_id}: layer {layer} is not a layer of the template")
            content_uri = template_dir / str(resource["Properties"]["ContentUri"])
            layer_dirs.append(layer_folder(content_uri).resolve())
        code_dir = (template_dir / str(spec.properties.get("CodeUri", "."))).resolve()
        metadata = template.resources.get(spec.logical_id, {}).get("Metadata", {})
        collectors = metadata.get(COLLECTORS_METADATA, [])
        if not isinstance(collectors, list) or not all(isinstance(c, str) for c in collectors):
            raise FunctionConfigError(f"{spec.logical_id}: Metadata {COLLECTORS_METADATA} must be a list of "
                                      "strings")
        # An HTTP API event without a Path is the $default route, which is also its routeKey.
        api_paths = frozenset(str(event.properties.get("Path", "$default")) for event in spec.events
                              if event.type in API_EVENT_TYPES)
        if not code_dir.is_dir():
            raise FunctionConfigError(f"{spec.logical_id}: CodeUri {code_dir} is not a folder")
        return cls(
            logical_id=spec.logical_id,
            function_name=str(spec.properties.get("FunctionName") or spec.logical_id),
            handler=spec.handler,
            runtime=spec.runtime,
            code_dir=code_dir,
            layer_dirs=tuple(layer_dirs),
            timeout=spec.timeout,
            memory_size=spec.memory_size,
            reserved_concurrency=spec.reserved_concurrency,
            service=spec.service,
            variables=spec.environment,
            api_paths=api_paths,
            collectors=tuple(collectors),
        )

    def environment(self, log_stream_name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The process environment of one execution environment.

        Like Lambda, the environment does not inherit the host's variables: it gets a
        small base (``PATH``, locale, AWS credentials so SDK clients can sign requests
        to the local emulator), the function's variables, then Lambda's reserved
        variables, which the function's configuration cannot override.
        """
        source = os.environ if base is None else base
        env = {
            "PATH": source.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "AWS_ACCESS_KEY_ID": source.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": source.get("AWS_SECRET_ACCESS_KEY", "testing"),
        }
        if "AWS_SESSION_TOKEN" in source:
            env["AWS_SESSION_TOKEN"] = source["AWS_SESSION_TOKEN"]
        env.update(self.variables)
        env.update({
            "_HANDLER": self.handler,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{self.runtime}",
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_size),
            "AWS_LAMBDA_FUNCTION_VERSION": VERSION,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": self.log_group_name,
            "AWS_LAMBDA_LOG_STREAM_NAME": log_stream_name,
            "LAMBDA_TASK_ROOT": str(self.code_dir),
            "LAMBDA_RUNTIME_DIR": str(Path(__file__).resolve().parent),
            # Handler output reaches the log as it is printed, as on Lambda.
            "PYTHONUNBUFFERED": "1",
            # No .pyc next to the function's code: Python validates a .pyc by the
            # source's mtime in whole seconds and its size, so an edit within the same
            # second could otherwise run stale code after a code-change reload.
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        return env


def load_definitions(
    template: Template, template_dir: Path, service: str | None = None, names: list[str] | None = None
) -> list[FunctionDefinition]:
    """The functions of one host: those tagged with ``service`` and/or those named in ``names``."""
    specs = template.functions()
    known = {spec.logical_id for spec in specs}
    missing = sorted(set(names or []) - known)
    if missing:
        raise FunctionConfigError(f"no such function(s) in the template: {', '.join(missing)}")
    chosen = [
        spec for spec in specs
        if (service is not None and spec.service == service) or spec.logical_id in (names or [])
    ]
    return [FunctionDefinition.from_spec(spec, template, template_dir) for spec in chosen]
