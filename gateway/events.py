"""API Gateway's Lambda proxy contract: request → event, function result → HTTP response.

Handlers written for AWS (Powertools' resolvers included) must see byte-for-byte the
event API Gateway would send, so both payload formats are built here exactly as AWS
documents them: REST API (``Api`` events, payload 1.0) and HTTP API (``HttpApi``,
payload 2.0), including their quirks (1.0: last header value wins in ``headers``,
``null`` for empty maps; 2.0: lower-case headers joined with commas, cookies apart,
absent keys instead of nulls). The path the function sees is the one after the
gateway's filters (``/payments/authorize``), as with the seed's StripPrefix.
"""

from __future__ import annotations

import base64
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

import orjson

from gateway.api_map import ApiRoute
from infra.net.messages import Request

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"

_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript",
               "application/x-www-form-urlencoded", "application/graphql", "application/x-yaml")


class ProxyResultError(ValueError):
    """The function's answer is not a valid proxy result (API Gateway answers 502)."""


_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


def clean_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop framing headers a function may return (the gateway frames the response itself) and any
    value with a line break (it would split the response)."""
    return [(n, v) for n, v in headers if n.lower() not in _HOP_BY_HOP and "\n" not in v and "\r" not in v]


@lru_cache(maxsize=256)
def _stable_id(name: str, length: int) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, name).hex[:length]


def api_id(route: ApiRoute) -> str:
    """A stable 10-character API id per API resource (AWS ids look like ``a1b2c3d4e5``)."""
    return _stable_id(route.api.logical_id, 10)


def _resource_id(route: ApiRoute) -> str:
    return _stable_id(route.api.logical_id + route.resource, 6)


def new_request_id() -> str:
    """A UUID4-shaped id; ``random`` rather than ``os.urandom``: ids must be unique, not secret."""
    h = f"{random.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _matches_media(media: str, patterns: tuple[str, ...]) -> bool:
    for pattern in patterns:
        pattern = pattern.replace("~1", "/").lower()
        if pattern in ("*/*", media) or (pattern.endswith("/*") and media.startswith(pattern[:-1])):
            return True
    return False


def is_binary(content_type: str, binary_media_types: tuple[str, ...] = ()) -> bool:
    """Whether a body travels base64-encoded: the API's BinaryMediaTypes, else any non-text type."""
    media = _media_type(content_type)
    if binary_media_types and _matches_media(media, binary_media_types):
        return True
    if not media:
        return False
    return not (media.startswith(_TEXT_TYPES) or media.endswith(("+json", "+xml")))


def encode_body(body: bytes, content_type: str,
                binary_media_types: tuple[str, ...]) -> tuple[str | None, bool]:
    """(body, isBase64Encoded); bytes that are not UTF-8 go base64 whatever the type says."""
    if not body:
        return None, False
    if not is_binary(content_type, binary_media_types):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def parse_query(query: str) -> list[tuple[str, str]]:
    """Query pairs, decoded, in order; a key without ``=`` has an empty value (as AWS)."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote_plus(key), unquote_plus(value)))
    return pairs


@lru_cache(maxsize=4)
def _request_time_at(second: int) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))


def _request_time(now: float) -> str:
    """API Gateway's ``requestTime`` (computed once per second: strftime costs more than the rest)."""
    return _request_time_at(int(now))


def build_v1_event(request: Request, route: ApiRoute, path: str, path_params: Mapping[str, str],
                   request_id: str, now: float, host: str) -> dict[str, Any]:
    """REST API proxy event (payload format 1.0)."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        headers[name] = value
        multi_headers.setdefault(name, []).append(value)
    pairs = parse_query(request.query)
    query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    for key, value in pairs:
        query[key] = value
        multi_query.setdefault(key, []).append(value)
    body, encoded = encode_body(request.body, request.header("content-type"), route.api.binary_media_types)
    identifier = api_id(route)
    stage = route.api.stage
    return {
        "resource": route.resource,
        "path": path,
        "httpMethod": request.method,
        "headers": headers or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": dict(path_params) or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": _resource_id(route),
            "resourcePath": route.resource,
            "httpMethod": request.method,
            "extendedRequestId": base64.b64encode(random.getrandbits(96).to_bytes(12, "big")).decode()[:16],
            "requestTime": _request_time(now),
            "path": f"/{stage}{path}",
            "accountId": ACCOUNT_ID,
            "protocol": request.protocol,
            "stage": stage,
            "domainPrefix": host.split(".", 1)[0].split(":", 1)[0],
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": request.source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": request.header("user-agent"),
                "user": None,
            },
            "domainName": host,
            "apiId": identifier,
        },
        "body": body,
        "isBase64Encoded": encoded,
    }


def build_v2_event(request: Request, route: ApiRoute, path: str, path_params: Mapping[str, str],
                   request_id: str, now: float, host: str) -> dict[str, Any]:
    """HTTP API proxy event (payload format 2.0)."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    query: dict[str, str] = {}
    for key, value in parse_query(request.query):
        query[key] = f"{query[key]},{value}" if key in query else value
    body, encoded = encode_body(request.body, headers.get("content-type", ""), route.api.binary_media_types)
    route_key = "$default" if route.resource == "/$default" else route.route_key
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": request.query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if query:
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": api_id(route),
        "domainName": host,
        "domainPrefix": host.split(".", 1)[0].split(":", 1)[0],
        "http": {
            "method": request.method,
            "path": path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": route.api.stage,
        "time": _request_time(now),
        "timeEpoch": int(now * 1000),
    }
    if body is not None:
        event["body"] = body
    if path_params:
        event["pathParameters"] = dict(path_params)
    event["isBase64Encoded"] = encoded
    return event


def build_event(request: Request, route: ApiRoute, path: str, path_params: Mapping[str, str],
                request_id: str, now: float, host: str) -> dict[str, Any]:
    """The event for the route's payload format (``Api`` → 1.0, ``HttpApi`` → 2.0)."""
    builder = build_v1_event if route.event_type == "Api" else build_v2_event
    return builder(request, route, path, path_params, request_id, now, host)


@dataclass(slots=True)
class ProxyResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _body_bytes(body: Any, encoded: bool) -> bytes:
    if body is None:
        return b""
    if not isinstance(body, str):
        raise ProxyResultError("body must be a string")
    if encoded:
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise ProxyResultError("isBase64Encoded body is not base64") from None
    return body.encode("utf-8")


def _status(value: Any) -> int:
    try:
        status = int(value)
    except (TypeError, ValueError):
        raise ProxyResultError("statusCode is not an integer") from None
    if not 100 <= status <= 599:
        raise ProxyResultError(f"statusCode {status} out of range")
    return status


def _header_pairs(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``headers`` and ``multiValueHeaders`` merged; a name in both keeps every value (as AWS)."""
    headers = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(headers, Mapping) or not isinstance(multi, Mapping):
        raise ProxyResultError("headers must be objects")
    pairs: list[tuple[str, str]] = []
    for name, values in multi.items():
        pairs.extend((str(name), str(v)) for v in (values if isinstance(values, list) else [values]))
    lowered = {name.lower() for name in multi}
    pairs.extend((str(name), str(value)) for name, value in headers.items() if name.lower() not in lowered)
    return pairs


def map_v1_result(payload: bytes) -> ProxyResponse:
    """A REST API proxy result; anything else is a malformed Lambda proxy response (502)."""
    try:
        result = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ProxyResultError("result is not JSON") from None
    if not isinstance(result, dict) or "statusCode" not in result:
        raise ProxyResultError("result has no statusCode")
    return ProxyResponse(_status(result["statusCode"]), _header_pairs(result),
                         _body_bytes(result.get("body"), bool(result.get("isBase64Encoded"))))


def map_v2_result(payload: bytes) -> ProxyResponse:
    """An HTTP API result: a proxy object, or any JSON value that becomes a 200 JSON body."""
    try:
        result = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ProxyResultError("result is not JSON") from None
    if not isinstance(result, dict) or "statusCode" not in result:
        return ProxyResponse(200, [("Content-Type", "application/json")], payload)
    pairs = _header_pairs(result)
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list):
        raise ProxyResultError("cookies must be a list")
    pairs.extend(("Set-Cookie", str(cookie)) for cookie in cookies)
    if not any(name.lower() == "content-type" for name, _ in pairs):
        pairs.append(("Content-Type", "application/json"))
    return ProxyResponse(_status(result["statusCode"]), pairs,
                         _body_bytes(result.get("body"), bool(result.get("isBase64Encoded"))))


def map_result(route: ApiRoute, payload: bytes) -> ProxyResponse:
    return map_v1_result(payload) if route.event_type == "Api" else map_v2_result(payload)
