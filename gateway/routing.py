"""Two routing stages: Spring Cloud Gateway routes, then the template's API events.

Stage 1 (``routes.yaml``, Spring syntax) picks a route by path prefix, rewrites the
path (``StripPrefix``), names a service (``lb://NAME``), exactly like the seed's
gateway, and says when a failed upstream call may be re-sent (``Retry``). Stage 2 is
what API Gateway does in front of Lambda: the rewritten path and method are matched
against the ``Api``/``HttpApi`` events of that service's functions in ``template.yaml``
(``{param}``, greedy ``{proxy+}``, ``ANY``), which gives the function to invoke and
the event shape it expects. Both tables are built once at start.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from infra.sam.template import Template

log = logging.getLogger("payfn.gateway.routing")
ROUTES_PATH = Path(__file__).resolve().parent / "routes.yaml"
IMPLICIT_REST_API = "ServerlessRestApi"
IMPLICIT_HTTP_API = "ServerlessHttpApi"


class RoutingConfigError(ValueError):
    """The routes file or the template's API events cannot be used (message says where)."""


# --- stage 1: Spring Cloud Gateway routes ------------------------------------------------


def spring_path_regex(pattern: str) -> re.Pattern[str]:
    """Spring's PathPattern → regex: ``/**`` any rest (or none), ``*`` within a segment, ``{v}`` a segment."""
    if not pattern.startswith("/"):
        raise RoutingConfigError(f"Path pattern {pattern!r} must start with '/'")
    parts = pattern.strip("/").split("/") if pattern != "/" else []
    regex = ""
    for index, part in enumerate(parts):
        if part == "**":
            if index != len(parts) - 1:
                raise RoutingConfigError(f"'**' is only allowed at the end of {pattern!r}")
            regex += "(?:/.*)?"
            break
        segment = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(part)).replace(r"\*", "[^/]*")
        regex += "/" + segment
    return re.compile(f"^{regex or '/'}/?$")


class Failure(Enum):
    """Upstream failures a route may re-send after, named by the Java exceptions Spring uses."""

    #: No connection opened (refused, or the connect timed out): nothing was sent.
    CONNECT = "java.net.ConnectException"
    #: The connection ended after the request was written, before any answer byte: the
    #: function may have run (reactor-netty: "Connection prematurely closed BEFORE response").
    CONNECTION_LOST = "reactor.netty.http.client.PrematureCloseException"


#: Spring's exception names (fully qualified or simple) → the failures they stand for.
#: ``IOException`` is the superclass of both in Java, so it means both here too.
_EXCEPTIONS: dict[str, frozenset[Failure]] = {
    "java.io.IOException": frozenset(Failure),
    "java.net.ConnectException": frozenset({Failure.CONNECT}),
    "reactor.netty.http.client.PrematureCloseException": frozenset({Failure.CONNECTION_LOST}),
}
_EXCEPTIONS.update({name.rsplit(".", 1)[1]: failures for name, failures in list(_EXCEPTIONS.items())})
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s)?$")


def _duration(value: Any, what: str, route_id: str) -> float:
    """Spring's duration shorthand (``10ms``, ``2s``; a bare number is milliseconds) → seconds."""
    found = _DURATION.match(str(value).strip().lower())
    if found is None:
        raise RoutingConfigError(f"route {route_id}: Retry {what} {value!r} is not like 10ms or 1s")
    amount = float(found.group(1))
    return amount if found.group(2) == "s" else amount / 1000


def _names(value: Any) -> list[str]:
    """A YAML list or a comma-separated string (both are valid in Spring's binding)."""
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(item).strip() for item in items if str(item).strip()]


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed upstream call is re-sent: Spring Cloud Gateway's ``Retry`` filter, made safe.

    - ``retries``: re-sends after the first attempt. Each goes to another UP instance
      when there is one (the failed one is quarantined by the service directory).
    - ``failures``: which failures are retried (see :class:`Failure`).
    - ``methods``: which methods may be re-sent after :attr:`Failure.CONNECTION_LOST`.
      That failure leaves unknown whether the function ran, so only operations that
      are idempotent by contract may be repeated: GET/HEAD, and POST only on a route
      whose operation dedupes (``POST /payments/authorize``). A connect failure sent
      nothing, so it is retried whatever the method.
    - backoff: the wait before re-send *n* (1-based) is ``first_backoff * factor**(n-1)``
      (or the previous wait times ``factor`` when ``based_on_previous_value``), capped at
      ``max_backoff``; ``first_backoff`` 0 re-sends at once.

    Deliberately not supported (rejected when configured): retries on a status or a
    series (a 5xx answer means the function ran; re-running it is the client's call,
    with its idempotency key) and on timeouts (the function may still be running).
    The routes file therefore says ``series: []`` (Spring's default retries 5xx).
    """

    retries: int = 3
    failures: frozenset[Failure] = frozenset({Failure.CONNECT})
    methods: frozenset[str] = frozenset({"GET"})
    first_backoff: float = 0.0
    max_backoff: float = 0.0
    factor: float = 2.0
    based_on_previous_value: bool = False

    def retries_after(self, failure: Failure, method: str) -> bool:
        """Whether a request of ``method`` may be re-sent after ``failure`` at all."""
        if failure not in self.failures:
            return False
        return failure is Failure.CONNECT or method in self.methods

    def backoff(self, retry: int, previous: float) -> float:
        """Seconds to wait before re-send number ``retry`` (1-based)."""
        if self.first_backoff <= 0:
            return 0.0
        if retry == 1:
            wait = self.first_backoff
        elif self.based_on_previous_value:
            wait = previous * self.factor
        else:
            wait = self.first_backoff * self.factor ** (retry - 1)
        return min(wait, self.max_backoff) if self.max_backoff > 0 else wait


#: A route without a Retry filter: the load balancer's own retry (SPEC: "on a connection
#: failure drops that instance and retries another"), which is safe for every method.
CONNECT_ONLY = RetryPolicy()


def parse_retry(args: Any, route_id: str) -> RetryPolicy:
    """The fully expanded ``- name: Retry`` / ``args:`` form of Spring's Retry filter."""
    if not isinstance(args, Mapping):
        raise RoutingConfigError(f"route {route_id}: Retry needs 'args' (the name/args form)")
    unknown = set(args) - {"retries", "methods", "exceptions", "statuses", "series", "backoff"}
    if unknown:
        raise RoutingConfigError(f"route {route_id}: Retry does not know {', '.join(sorted(unknown))}")
    if _names(args.get("statuses")) or _names(args.get("series")):
        raise RoutingConfigError(
            f"route {route_id}: Retry on statuses/series is not supported: a 5xx answer means the function "
            "ran, and re-running it is the client's decision (write 'series: []')")
    failures: set[Failure] = set()
    for name in _names(args.get("exceptions", "java.io.IOException")):
        if name not in _EXCEPTIONS:
            raise RoutingConfigError(
                f"route {route_id}: Retry exception {name} is not supported (a timed-out request may "
                f"still be running); use {', '.join(sorted(k for k in _EXCEPTIONS if '.' in k))}")
        failures.update(_EXCEPTIONS[name])
    try:
        retries = int(args.get("retries", 3))
    except (TypeError, ValueError):
        raise RoutingConfigError(f"route {route_id}: Retry retries must be a number") from None
    if retries < 0:
        raise RoutingConfigError(f"route {route_id}: Retry retries must be ≥ 0")
    methods = frozenset(name.upper() for name in _names(args.get("methods", "GET")))
    backoff = args.get("backoff") or {}
    if not isinstance(backoff, Mapping):
        raise RoutingConfigError(f"route {route_id}: Retry backoff must be a mapping")
    first = _duration(backoff.get("firstBackoff", "0ms"), "firstBackoff", route_id)
    factor = float(backoff.get("factor", 2))
    if factor < 1:
        raise RoutingConfigError(f"route {route_id}: Retry backoff factor must be ≥ 1")
    return RetryPolicy(
        retries=retries, failures=frozenset(failures), methods=methods, first_backoff=first,
        max_backoff=_duration(backoff.get("maxBackoff", "0ms"), "maxBackoff", route_id), factor=factor,
        based_on_previous_value=bool(backoff.get("basedOnPreviousValue", False)),
    )


@dataclass(frozen=True)
class GatewayRoute:
    """One Spring route: predicates (Path, Method) and filters (StripPrefix, PrefixPath, Retry)."""

    id: str
    uri: str
    paths: tuple[re.Pattern[str], ...]
    methods: frozenset[str] = frozenset()
    strip_prefix: int = 0
    prefix_path: str = ""
    retry: RetryPolicy = CONNECT_ONLY

    @property
    def service(self) -> str | None:
        """The registry application for ``lb://NAME`` URIs (upper case, as Eureka keeps names)."""
        return self.uri[5:].upper() if self.uri.startswith("lb://") else None

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        return any(pattern.match(path) for pattern in self.paths)

    def rewrite(self, path: str) -> str:
        """Apply the filters to the path, as Spring does (``/api/payments/x`` → ``/payments/x``)."""
        if self.strip_prefix:
            segments = path.split("/")[1:]
            rest = "/".join(segments[self.strip_prefix:])
            trailing = "/" if path.endswith("/") and rest and not rest.endswith("/") else ""
            path = "/" + rest + trailing
        if self.prefix_path:
            path = self.prefix_path.rstrip("/") + path
        return path


def _shortcut(entry: Any, kind: str, route_id: str) -> tuple[str, str]:
    if not isinstance(entry, str) or "=" not in entry:
        raise RoutingConfigError(f"route {route_id}: {kind} {entry!r} is not in 'Name=args' form")
    name, _, args = entry.partition("=")
    return name.strip(), args.strip()


def parse_routes(document: Mapping[str, Any]) -> list[GatewayRoute]:
    """``spring.cloud.gateway.routes`` → routes, in file order (first match wins, as in Spring)."""
    try:
        entries = document["spring"]["cloud"]["gateway"]["routes"]
    except (KeyError, TypeError):
        raise RoutingConfigError("no spring.cloud.gateway.routes") from None
    routes = []
    for entry in entries:
        route_id, uri = str(entry.get("id", "")), str(entry.get("uri", ""))
        if not route_id or not uri.startswith("lb://"):
            raise RoutingConfigError(f"route {entry!r} needs an id and an lb:// uri")
        paths: list[re.Pattern[str]] = []
        methods: set[str] = set()
        for predicate in entry.get("predicates", []):
            name, args = _shortcut(predicate, "predicate", route_id)
            values = [v.strip() for v in args.split(",") if v.strip()]
            if name == "Path":
                paths.extend(spring_path_regex(v) for v in values)
            elif name == "Method":
                methods.update(v.upper() for v in values)
            else:
                raise RoutingConfigError(f"route {route_id}: predicate {name} is not supported")
        strip, prefix, retry = 0, "", CONNECT_ONLY
        for item in entry.get("filters", []):
            if isinstance(item, Mapping):
                if item.get("name") != "Retry":
                    raise RoutingConfigError(f"route {route_id}: filter {item.get('name')} is not supported "
                                             "in the name/args form")
                retry = parse_retry(item.get("args"), route_id)
                continue
            name, args = _shortcut(item, "filter", route_id)
            if name == "StripPrefix":
                strip = int(args)
            elif name == "PrefixPath":
                prefix = args
            else:
                raise RoutingConfigError(f"route {route_id}: filter {name} is not supported")
        if not paths:
            raise RoutingConfigError(f"route {route_id} has no Path predicate")
        routes.append(GatewayRoute(route_id, uri, tuple(paths), frozenset(methods), strip, prefix, retry))
    return routes


def load_routes(path: Path = ROUTES_PATH) -> list[GatewayRoute]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RoutingConfigError(f"{path} not found") from None
    return parse_routes(document)


# --- stage 2: the template's API events ----------------------------------------------------


@dataclass(frozen=True)
class CorsPolicy:
    """An API's CORS settings, with SAM's quoting (``"'GET,POST'"``) removed."""

    allow_origin: str = "*"
    allow_methods: str = "*"
    allow_headers: str = ""
    max_age: str = ""
    allow_credentials: bool = False
    expose_headers: str = ""

    def preflight_headers(self, origin: str) -> list[tuple[str, str]]:
        headers = [
            ("Access-Control-Allow-Origin", self.origin_for(origin)),
            ("Access-Control-Allow-Methods", self.allow_methods),
        ]
        if self.allow_headers:
            headers.append(("Access-Control-Allow-Headers", self.allow_headers))
        if self.max_age:
            headers.append(("Access-Control-Max-Age", self.max_age))
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def response_headers(self, origin: str) -> list[tuple[str, str]]:
        headers = [("Access-Control-Allow-Origin", self.origin_for(origin))]
        if self.expose_headers:
            headers.append(("Access-Control-Expose-Headers", self.expose_headers))
        if self.allow_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def origin_for(self, origin: str) -> str:
        """A list of origins answers with the caller's own origin when it is allowed."""
        allowed = [o.strip() for o in self.allow_origin.split(",")]
        if "*" in allowed and not self.allow_credentials:
            return "*"
        return origin if origin in allowed or "*" in allowed else allowed[0]


def _unquote_sam(value: Any) -> str:
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "'" else text


def cors_policy(api_type: str, properties: Mapping[str, Any]) -> CorsPolicy | None:
    """SAM ``Cors`` (REST: quoted strings or a bare origin) / ``CorsConfiguration`` (HTTP API)."""
    if api_type == "Api":
        cors = properties.get("Cors")
        if cors is None:
            return None
        if isinstance(cors, str):
            return CorsPolicy(allow_origin=_unquote_sam(cors))
        return CorsPolicy(
            allow_origin=_unquote_sam(cors.get("AllowOrigin", "'*'")),
            allow_methods=_unquote_sam(cors.get("AllowMethods", "'*'")),
            allow_headers=_unquote_sam(cors.get("AllowHeaders", "''")),
            max_age=_unquote_sam(cors.get("MaxAge", "''")),
            allow_credentials=bool(cors.get("AllowCredentials", False)),
        )
    cors = properties.get("CorsConfiguration")
    if not cors:
        return None
    if cors is True:
        return CorsPolicy()
    return CorsPolicy(
        allow_origin=_unquote_sam(cors.get("AllowOrigins", ["*"])),
        allow_methods=_unquote_sam(cors.get("AllowMethods", ["*"])),
        allow_headers=_unquote_sam(cors.get("AllowHeaders", [])),
        max_age=str(cors.get("MaxAge", "")),
        allow_credentials=bool(cors.get("AllowCredentials", False)),
        expose_headers=_unquote_sam(cors.get("ExposeHeaders", [])),
    )


@dataclass(frozen=True)
class ApiDefinition:
    """An ``AWS::Serverless::Api`` / ``HttpApi`` (or the implicit one SAM creates)."""

    logical_id: str
    type: str
    stage: str
    cors: CorsPolicy | None
    binary_media_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApiRoute:
    """One API event of one function: ``Method Path`` → function, with its API."""

    function: str
    event_type: str
    method: str
    resource: str
    api: ApiDefinition
    regex: re.Pattern[str]
    rank: tuple[int, ...]
    params: tuple[str, ...] = field(default_factory=tuple)
    timeout: float = 3.0

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.resource}"


def _resource_regex(resource: str) -> tuple[re.Pattern[str], tuple[int, ...], tuple[str, ...]]:
    """API Gateway resource path → (regex, specificity rank, parameter names).

    Rank per segment: 0 literal, 1 ``{param}``, 2 ``{proxy+}``; the smallest rank
    tuple is the most specific, which is how API Gateway chooses between overlaps.
    """
    regex, rank, params = "", [], []
    for segment in [s for s in resource.split("/") if s]:
        greedy = re.fullmatch(r"\{([A-Za-z0-9_.-]+)\+\}", segment)
        param = re.fullmatch(r"\{([A-Za-z0-9_.-]+)\}", segment)
        if greedy:
            regex += f"/(?P<p{len(params)}>.+)"
            params.append(greedy.group(1))
            rank.append(2)
        elif param:
            regex += f"/(?P<p{len(params)}>[^/]+)"
            params.append(param.group(1))
            rank.append(1)
        else:
            regex += "/" + re.escape(segment)
            rank.append(0)
    return re.compile(f"^{regex or '/'}/?$"), tuple(rank), tuple(params)


class MethodNotAllowed(LookupError):
    """The path exists for the service but not with this method (answered 403/404 like AWS)."""


class ApiMap:
    """The API events of every function of every service, from the template."""

    def __init__(self, routes: Mapping[str, list[ApiRoute]]) -> None:
        self._routes = {service: sorted(items, key=lambda r: (r.rank, r.method == "ANY"))
                        for service, items in routes.items()}

    @classmethod
    def from_template(cls, template: Template) -> ApiMap:
        apis: dict[str, ApiDefinition] = {}
        api_globals = template.raw.get("Globals", {})

        def api(logical_id: str, event_type: str) -> ApiDefinition:
            if logical_id not in apis:
                resource = template.resources.get(logical_id, {})
                global_key = "Api" if event_type == "Api" else "HttpApi"
                properties = {**api_globals.get(global_key, {}),
                              **template.resolve(resource.get("Properties", {}))}
                default_stage = "Prod" if event_type == "Api" else "$default"
                apis[logical_id] = ApiDefinition(
                    logical_id, event_type, str(properties.get("StageName", default_stage)),
                    cors_policy(event_type, properties),
                    tuple(str(t) for t in properties.get("BinaryMediaTypes", [])),
                )
            return apis[logical_id]

        routes: dict[str, list[ApiRoute]] = {}
        for function in template.functions():
            for event in function.events:
                if event.type not in ("Api", "HttpApi"):
                    continue
                if function.service is None:
                    log.warning("%s has an %s event but no payfn:service tag: no lb:// route reaches it",
                                function.logical_id, event.type)
                    continue
                props = event.properties
                api_ref = props.get("RestApiId" if event.type == "Api" else "ApiId")
                api_id = str(api_ref) if api_ref else (
                    IMPLICIT_REST_API if event.type == "Api" else IMPLICIT_HTTP_API)
                resource = str(props.get("Path", "/$default" if event.type == "HttpApi" else "/"))
                method = str(props.get("Method", "ANY")).upper()
                method = "ANY" if method in ("X-AMAZON-APIGATEWAY-ANY-METHOD", "*") else method
                regex, rank, params = _resource_regex(resource)
                routes.setdefault(function.service.upper(), []).append(ApiRoute(
                    function.logical_id, event.type, method, resource, api(api_id, event.type),
                    regex, rank, params, function.timeout,
                ))
        return cls(routes)

    def services(self) -> list[str]:
        return sorted(self._routes)

    def match(self, service: str, method: str, path: str) -> tuple[ApiRoute, dict[str, str]] | None:
        """The most specific event for ``method path``; MethodNotAllowed if only the path matches."""
        path_matched = False
        for route in self._routes.get(service, ()):
            found = route.regex.match(path)
            if found is None:
                continue
            path_matched = True
            if route.method not in (method, "ANY"):
                continue
            values = {name: unquote(found.group(f"p{i}")) for i, name in enumerate(route.params)}
            return route, values
        if path_matched:
            raise MethodNotAllowed(f"{method} {path}")
        return None

    def any_route(self, service: str, path: str) -> ApiRoute | None:
        """The first event whose path matches, whatever its method (for CORS preflights)."""
        for route in self._routes.get(service, ()):
            if route.regex.match(path):
                return route
        return None
