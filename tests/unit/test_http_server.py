"""payfn's HTTP/1.1 server (``infra.http_server``), shared by the gateway and the function hosts."""

from __future__ import annotations

import asyncio

from infra.http_server import HttpProtocol, Request, Response


async def exchange(raw: bytes, max_body: int = 1024, **kwargs: object) -> tuple[bytes, list[Request]]:
    """Send ``raw`` on one connection to a fresh server and read until the server closes it."""
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        if request.path == "/slow":
            await asyncio.sleep(0.05)
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return Response(200, request.path.encode(), [("Content-Type", "text/plain")])

    connections: set[HttpProtocol] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(handler, connections, max_body, **kwargs),  # type: ignore[arg-type]
        "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    server.close()
    return answer, seen


def test_pipelined_requests_are_answered_in_order() -> None:
    raw = (b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /fast?a=1 HTTP/1.1\r\nHost: x\r\nX-Thing: one\r\nx-thing: two\r\n\r\n"
           b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer, seen = asyncio.run(exchange(raw))
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.index(b"/slow") < answer.index(b"/fast") < answer.index(b"/last")
    assert answer.endswith(b"Connection: close\r\n\r\n/last")
    fast = seen[1]
    assert (fast.query, fast.header("x-thing")) == ("a=1", "one")
    assert [v for n, v in fast.headers if n.lower() == "x-thing"] == ["one", "two"]


def test_body_over_the_limit_is_refused_from_content_length() -> None:
    def too_large(request: Request) -> Response:
        return Response(413, f"too large for {request.path}".encode())

    raw = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n"
    answer, seen = asyncio.run(exchange(raw, max_body=100, too_large=too_large))
    assert answer.startswith(b"HTTP/1.1 413 ") and answer.endswith(b"too large for /upload")
    assert b"Connection: close" in answer and seen == []


def test_head_has_no_body_and_errors_are_contained() -> None:
    raw = b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer, _ = asyncio.run(exchange(raw))
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 2" in head
    assert rest.startswith(b"HTTP/1.1 500 ") and rest.endswith(b'{"message":"Internal server error"}')


def test_malformed_request_is_400_and_closed() -> None:
    answer, seen = asyncio.run(exchange(b"NOT HTTP AT ALL\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 400 ") and b"malformed HTTP request" in answer and seen == []
