"""What :class:`~infra.net.server.HttpServer` hands its handler and what it writes back.

A request keeps its headers in arrival order and original case, with a lower-case
index for look-ups; a response is rendered in one piece, its Content-Length computed
here; a refusal is a request the server answered itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

import orjson

_REASONS = {status.value: status.phrase for status in HTTPStatus}
#: The Content-Type header of every JSON answer the server writes itself.
JSON_HEADER = ("Content-Type", "application/json")


@dataclass(slots=True)
class Request:
    """What the server received, headers in arrival order with their original case.

    ``by_name`` indexes the first value of each header by lower-case name: the
    gateway looks a request's headers up about ten times on its way.
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str = ""
    protocol: str = "HTTP/1.1"
    server_port: int = 0
    by_name: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.headers:
            self.by_name.setdefault(name.lower(), value)

    def header(self, name: str, default: str = "") -> str:
        """First value of a header; ``name`` must be lower case."""
        return self.by_name.get(name, default)

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))
        self.by_name.setdefault(name.lower(), value)

    def replace_header(self, name: str, value: str) -> None:
        """Drop every value of ``name`` and set this one."""
        lowered = name.lower()
        self.headers = [(n, v) for n, v in self.headers if n.lower() != lowered]
        self.headers.append((name, value))
        self.by_name[lowered] = value


@dataclass(slots=True)
class Response:
    """An answer; ``Content-Length`` (and ``Connection: close``) are added when it is written."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the server answered a request itself (its handler never saw it)."""

    status: int
    code: str
    message: str
    #: The request's method and path when its head was read (413 after the head), else empty.
    method: str = ""
    path: str = ""


Handler = Callable[[Request], Awaitable[Response]]
Refuse = Callable[[Refusal], Response]


def json_refusal(refusal: Refusal) -> Response:
    """The default answer to a refused request: ``{"code", "message"}``."""
    body = orjson.dumps({"code": refusal.code, "message": refusal.message})
    return Response(refusal.status, body, [JSON_HEADER])


def render(response: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    """Status line, headers (Content-Length computed here, never taken from a handler) and body."""
    parts = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}\r\n"]
    parts.extend(f"{name}: {value}\r\n" for name, value in response.headers)
    parts.append(f"Content-Length: {len(response.body)}\r\n")
    if not keep_alive:
        parts.append("Connection: close\r\n")
    parts.append("\r\n")
    head = "".join(parts).encode("latin-1", "replace")
    return head if head_only else head + response.body
