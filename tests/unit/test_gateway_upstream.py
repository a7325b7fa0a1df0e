"""The gateway's upstream pool tells a dead instance from a slow one, and a lost request from a cut answer."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway import upstream
from gateway.upstream import ConnectFailed, UpstreamConnectionLost, UpstreamPool
from infra.stack.process import free_port


def connect_error(port: int, connect_timeout: float) -> ConnectFailed:
    async def attempt() -> ConnectFailed:
        pool = UpstreamPool("127.0.0.1", port, connect_timeout=connect_timeout)
        with pytest.raises(ConnectFailed) as failure:
            await pool.request("GET", "/health", timeout=1.0)
        pool.close()
        return failure.value

    return asyncio.run(attempt())


def test_nothing_listening_is_refused() -> None:
    assert connect_error(free_port(), connect_timeout=1.0).refused is True


def test_connect_timeout_is_not_refused() -> None:
    """Regression: an overloaded host whose connect timed out was quarantined for 15 s,
    and with a single instance every request got 503 until the quarantine ended."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert connect_error(listener.getsockname()[1], connect_timeout=1e-9).refused is False


def test_connection_lost_tells_whether_the_answer_had_started() -> None:
    """Before any answer byte the request may be re-sent (route policy); after, the function ran."""

    async def lost(reply: bytes) -> UpstreamConnectionLost:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1])
        with pytest.raises(UpstreamConnectionLost) as failure:
            await pool.request("GET", "/x", timeout=5.0)
        pool.close()
        server.close()
        return failure.value

    assert asyncio.run(lost(b"")).answer_started is False
    assert asyncio.run(lost(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{")).answer_started is True


def test_a_connection_idle_past_the_limit_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server closes idle keep-alive connections (75 s): the pool stops reusing them well before."""

    async def connections_used(idle_limit: float) -> int:
        accepted = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

        monkeypatch.setattr(upstream, "MAX_IDLE_SECONDS", idle_limit)
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        pool = UpstreamPool("127.0.0.1", server.sockets[0].getsockname()[1])
        for _ in range(2):
            assert (await pool.request("GET", "/x", timeout=5.0)).body == b"ok"
            await asyncio.sleep(0.05)
        pool.close()
        server.close()
        return accepted

    assert asyncio.run(connections_used(30.0)) == 1
    assert asyncio.run(connections_used(0.01)) == 2
