"""Routing stage 1: the Spring Cloud Gateway route table (``routes.yaml``, Spring syntax).

A route is picked by path prefix (``Path``, ``Method`` predicates), its path rewritten
(``StripPrefix``, ``PrefixPath``), a service named (``lb://NAME``), exactly like the
seed's gateway, and it says when a failed upstream call may be re-sent (``Retry``).
Stage 2, the template's API events, is :mod:`gateway.api_map`. Built once at start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

ROUTES_PATH = Path(__file__).resolve().parent / "routes.yaml"


class RoutingConfigError(ValueError):
    """The routes file or the template's API events cannot be used (message says where)."""


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
