"""Routing stage 2: what API Gateway does in front of Lambda, from the template's API events.

After stage 1 (:mod:`gateway.spring_routes`) names a service and rewrites the path,
the path and method are matched against the ``Api``/``HttpApi`` events of that
service's functions in ``template.yaml`` (``{param}``, greedy ``{proxy+}``, ``ANY``),
which gives the function to invoke, the event shape it expects and its API's CORS
settings. The map is built once at start.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from infra.sam.template import Template

log = logging.getLogger("payfn.gateway.routing")
IMPLICIT_REST_API = "ServerlessRestApi"
IMPLICIT_HTTP_API = "ServerlessHttpApi"


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
