"""payfn's one HTTP/1.1 server (``infra.net.server``): framing, order, and its policy for hostile input."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest

from infra.net.limits import Limits
from infra.net.messages import Refusal, Request, Response, json_refusal
from infra.net.server import HttpServer

LIMITS = Limits(max_body_bytes=1024, max_head_bytes=2048, max_line_bytes=512, request_timeout=0.3,
                idle_timeout=0.5, linger_seconds=1.0)


async def start(limits: Limits = LIMITS, refuse=json_refusal) -> tuple[HttpServer, int, list[Request]]:
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        if request.path == "/slow":
            await asyncio.sleep(0.05)
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        return Response(200, request.path.encode() + b":" + request.body, [("Content-Type", "text/plain")])

    server = HttpServer(handler, limits, refuse)
    port = await server.start("127.0.0.1", 0)
    return server, port, seen


async def exchange(raw: bytes | list[bytes], limits: Limits = LIMITS, pause: float = 0.0,
                   **kwargs: object) -> tuple[bytes, list[Request]]:
    """Send ``raw`` (pieces ``pause`` s apart) on one connection and read until the server closes it."""
    server, port, seen = await start(limits, **kwargs)  # type: ignore[arg-type]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for piece in [raw] if isinstance(raw, bytes) else raw:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(pause)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await server.close()
    return answer, seen


def run(raw: bytes | list[bytes], limits: Limits = LIMITS, **kwargs: object) -> tuple[bytes, list[Request]]:
    return asyncio.run(exchange(raw, limits, **kwargs))  # type: ignore[arg-type]


def test_pipelined_requests_are_answered_in_order() -> None:
    raw = (b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /fast?a=1 HTTP/1.1\r\nHost: x\r\nX-Thing: one\r\nx-thing: two\r\n\r\n"
           b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
           b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer, seen = run(raw)
    assert answer.count(b"HTTP/1.1 200 OK") == 4
    order = [answer.index(part) for part in (b"/slow", b"/fast", b"/body:hello", b"/last")]
    assert order == sorted(order)
    assert answer.endswith(b"Connection: close\r\n\r\n/last:")
    fast = seen[1]
    assert (fast.query, fast.header("x-thing")) == ("a=1", "one")
    assert [v for n, v in fast.headers if n.lower() == "x-thing"] == ["one", "two"]


def test_a_body_split_over_many_packets_is_framed_by_its_length() -> None:
    pieces = [b"POST /p HTTP/1.1\r\nHost: x\r\nCont", b"ent-Length: 6\r\n\r\nab", b"cd", b"ef",
              b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]
    answer, seen = run(pieces, pause=0.01)
    assert [r.body for r in seen] == [b"abcdef", b""] and answer.endswith(b"/next:")


def test_body_over_the_limit_is_refused_from_content_length() -> None:
    def too_large(refusal: Refusal) -> Response:
        return Response(refusal.status, f"{refusal.code} for {refusal.method} {refusal.path}".encode())

    raw = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n"
    answer, seen = run(raw, refuse=too_large)
    assert answer.startswith(b"HTTP/1.1 413 ") and answer.endswith(b"PAYLOAD_TOO_LARGE for POST /upload")
    assert b"Connection: close" in answer and seen == []


def test_a_large_chunked_upload_gets_its_413_not_a_reset() -> None:
    """20 MB sent chunked with no Content-Length: the client, still sending, reads a 413."""
    async def scenario() -> bytes:
        server, port, seen = await start(replace(LIMITS, linger_seconds=5.0))
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        for _ in range(20 * 16):
            await loop.sock_sendall(sock, chunk)
        await loop.sock_sendall(sock, b"0\r\n\r\n")
        answer = b""
        while piece := await asyncio.wait_for(loop.sock_recv(sock, 65536), 5):
            answer += piece
        sock.close()
        await server.close()
        assert seen == []
        return answer

    answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"code":"PAYLOAD_TOO_LARGE"' in answer


def test_a_chunked_request_is_answered_and_closes_the_connection() -> None:
    raw = (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
           b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    answer, seen = run(raw)
    assert [r.body for r in seen] == [b"abcde"]
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.endswith(b"Connection: close\r\n\r\n/c:abcde")


def test_head_has_no_body_and_errors_are_contained() -> None:
    raw = b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer, _ = run(raw)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 3" in head
    assert rest.startswith(b"HTTP/1.1 500 ") and rest.endswith(b'{"message":"Internal server error"}')


@pytest.mark.parametrize("line", [
    b"NOT HTTP AT ALL", b"GET  /x HTTP/1.1", b"GET /x  HTTP/1.1", b"GET /x HTTP/2.0", b"GET /x",
    b"GET /x HTTP/1.1 ", b"GET\t/x HTTP/1.1", b"G@T /x HTTP/1.1",
])
def test_a_request_line_that_is_not_strict_http_1x_is_400_and_closed(line: bytes) -> None:
    answer, seen = run(line + b"\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"code":"MALFORMED_REQUEST"' in answer and seen == []
    assert b"Connection: close" in answer


@pytest.mark.parametrize("headers", [
    b"Content-Length: abc\r\n", b"Content-Length: 1\r\nContent-Length: 2\r\n", b"X-Bad\x00: v\r\n",
    b"Transfer-Encoding: gzip\r\n",
])
def test_malformed_headers_are_400(headers: bytes) -> None:
    answer, seen = run(b"POST /x HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and seen == []


def test_a_huge_header_is_431_without_reading_it_all() -> None:
    answer, seen = run([b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 7 * 1024 * 1024, b"\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 431 ") and b"HEADERS_TOO_LARGE" in answer and seen == []


def test_headers_over_the_limit_in_one_packet_are_431() -> None:
    answer, _ = run(b"GET /x HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(30))
                    + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_long_request_line_is_414() -> None:
    answer, _ = run(b"GET /" + b"a" * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 ") and b"URI_TOO_LONG" in answer


def test_a_stalled_body_is_408_after_the_request_timeout() -> None:
    answer, seen = run(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    assert answer.startswith(b"HTTP/1.1 408 ") and b"REQUEST_TIMEOUT" in answer and seen == []


def test_a_stalled_head_is_408() -> None:
    answer, _ = run(b"GET /x HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    answer, seen = run(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in answer and len(seen) == 1


def test_a_slow_but_steady_client_within_the_timeout_is_served() -> None:
    pieces = [b"POST /x HTTP/1.1\r\n", b"Host: x\r\nContent-Length: 2\r\n\r\n", b"o", b"k"]
    answer, seen = run(pieces, pause=0.05)
    assert answer.startswith(b"HTTP/1.1 200 ") and seen[0].body == b"ok"


def test_expect_100_continue_is_answered_before_the_body() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        server, port, _ = await start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n"
                     b"Connection: close\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"hi")
        final = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await server.close()
        return interim, final

    interim, final = asyncio.run(scenario())
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n" and final.endswith(b"/e:hi")
