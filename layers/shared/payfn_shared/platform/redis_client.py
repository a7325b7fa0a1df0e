"""The one Redis client factory of payfn.

Everything in payfn that talks to Redis (circuit breaker, rate limiter,
idempotency, monitoring) goes through :func:`get_redis`, so that a process
holds one connection pool per Redis URL and every caller gets the same short
timeouts. Short timeouts matter more than anything else here: the breaker and
the rate limiter sit on the request path and must fall back (local breaker,
fail-open limiter) within a fraction of a second when Redis is unreachable,
instead of hanging a payment request. redis-py's default client would retry
ten times with exponential backoff on a connection error; we allow one
immediate retry, which is enough to replace a pooled connection that a Redis
restart closed, and no more.
"""

from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.commands.core import Script
from redis.retry import Retry

from payfn_shared.platform.config import ConfigError, Settings, load_dataclass, load_settings

#: Environment prefix of :class:`RedisClientConfig` (e.g. ``PAYFN_REDIS_SOCKET_TIMEOUT_SECONDS``).
CONFIG_PREFIX = "PAYFN_REDIS_"


@dataclass(frozen=True)
class RedisClientConfig:
    """Client-side knobs (the address itself is in :class:`Settings`)."""

    ENV_PREFIX: ClassVar[str] = CONFIG_PREFIX

    connect_timeout_seconds: float = 0.25
    socket_timeout_seconds: float = 0.5
    retries: int = 1
    max_connections: int = 64

    def validate(self) -> None:
        if self.connect_timeout_seconds <= 0 or self.socket_timeout_seconds <= 0:
            raise ConfigError(f"{CONFIG_PREFIX}*_TIMEOUT_SECONDS must be > 0")
        if self.retries < 0:
            raise ConfigError(f"{CONFIG_PREFIX}RETRIES={self.retries} must be >= 0")
        if self.max_connections < 1:
            raise ConfigError(f"{CONFIG_PREFIX}MAX_CONNECTIONS={self.max_connections} must be >= 1")


_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def create_redis(url: str, config: RedisClientConfig | None = None) -> redis.Redis:
    """A new (uncached) client for ``url`` with payfn's timeouts.

    Tests that point code at a private Redis instance use this directly, so that
    they do not replace the process-wide client of the shared stack.
    """
    cfg = config or load_dataclass(RedisClientConfig)
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=cfg.connect_timeout_seconds,
        socket_timeout=cfg.socket_timeout_seconds,
        retry=Retry(NoBackoff(), cfg.retries),
        max_connections=cfg.max_connections,
        health_check_interval=30,
    )


def get_redis(settings: Settings | None = None) -> redis.Redis:
    """The process-wide client for the configured Redis URL (created on first use).

    Cached per URL: creating a client per call would open a connection per call,
    and Lambda keeps the process (and so this pool) warm between invocations.
    """
    url = (settings or load_settings()).redis_url
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = create_redis(url)
            _clients[url] = client
        return client


class RawScript:
    """One Lua script called with EVALSHA over payfn's own RESP2 connections.

    The rate limiter and the breaker call a script on every payment request, and
    redis-py spends ~145 µs of CPU per script call (connection pool, observability
    hooks, RESP3 parser, argument filtering) where the command itself needs ~25 µs
    over a plain socket: under load that was about a tenth of an execution
    environment's CPU. The calls keep redis-py's contract: the same reply values
    (integers, bytes, lists, None), a missing script is loaded (``NOSCRIPT``), and
    failures raise ``redis.ConnectionError`` / ``redis.TimeoutError`` /
    ``redis.ResponseError``, so the callers' fail-open and local-fallback paths are
    unchanged. The connection settings (address, timeouts, one retry) are the
    client's own. Against redis-py + hiredis 3.5.0 (``tests/load/bench_pieces.py``): 21–39 vs
    43–75 client CPU µs per EVALSHA (redis-py's own parser 60–88), so hiredis is not pinned.
    """

    def __init__(self, connections: RawConnections, script: str, pipelined: Script) -> None:
        self.connections = connections
        self.script = script.encode()
        self.sha = pipelined.sha.encode()
        self.pipelined = pipelined

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (),
                 client: Pipeline | None = None) -> Any:
        """The script's reply; with ``client`` (a redis-py pipeline) it is queued there instead."""
        if client is not None:
            return self.pipelined(keys=keys, args=args, client=client)
        tail = [str(len(keys)).encode(), *(_encode(k) for k in keys), *(_encode(a) for a in args)]
        try:
            return self.connections.command([b"EVALSHA", self.sha, *tail])
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return self.connections.command([b"EVAL", self.script, *tail])


class RawConnections:
    """Plain-socket RESP2 connections to one Redis, reused LIFO (one per concurrent caller)."""

    def __init__(self, client: redis.Redis) -> None:
        kwargs = client.connection_pool.connection_kwargs
        self.address = (str(kwargs.get("host", "127.0.0.1")), int(kwargs.get("port", 6379)))
        self.db = int(kwargs.get("db", 0) or 0)
        self.username = kwargs.get("username")
        self.password = kwargs.get("password")
        self.connect_timeout = kwargs.get("socket_connect_timeout")
        self.socket_timeout = kwargs.get("socket_timeout")
        retry = kwargs.get("retry")
        self.retries = retry.get_retries() if retry is not None else 0
        self._idle: list[tuple[socket.socket, Any]] = []
        self._lock = threading.Lock()

    def _connect(self) -> tuple[socket.socket, Any]:
        sock = socket.create_connection(self.address, timeout=self.connect_timeout)
        sock.settimeout(self.socket_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = (sock, sock.makefile("rb"))
        try:
            if self.password:
                auth = [b"AUTH", *([_encode(self.username)] if self.username else []), _encode(self.password)]
                self._roundtrip(conn, auth)
            if self.db:
                self._roundtrip(conn, [b"SELECT", str(self.db).encode()])
        except BaseException:
            _close(conn)
            raise
        return conn

    @staticmethod
    def _roundtrip(conn: tuple[socket.socket, Any], parts: list[bytes]) -> Any:
        sock, reader = conn
        sock.sendall(b"".join([b"*%d\r\n" % len(parts), *(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)]))
        return _read_reply(reader)

    def command(self, parts: list[bytes]) -> Any:
        """Send one command and return its reply; a broken connection is replaced ``retries`` times."""
        attempt = 0
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = self._connect()
                reply = self._roundtrip(conn, parts)
            except redis.ResponseError:
                self._release(conn)
                raise
            except (OSError, EOFError) as exc:
                if conn is not None:
                    _close(conn)
                attempt += 1
                if attempt > self.retries:
                    kind = redis.TimeoutError if isinstance(exc, TimeoutError) else redis.ConnectionError
                    raise kind(f"Redis {self.address[0]}:{self.address[1]}: {exc}") from exc
                continue
            self._release(conn)
            return reply

    def _release(self, conn: tuple[socket.socket, Any] | None) -> None:
        if conn is not None:
            with self._lock:
                self._idle.append(conn)


def _close(conn: tuple[socket.socket, Any]) -> None:
    """Close the reader as well: the socket's descriptor stays open while its makefile() is."""
    sock, reader = conn
    reader.close()
    sock.close()


def _encode(value: Any) -> bytes:
    """Arguments as redis-py encodes them (floats with ``repr``, text as UTF-8)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        raise redis.DataError("Invalid input of type: 'bool'. Convert to bytes, string, int or float first.")
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


def _read_reply(reader: Any) -> Any:
    """One reply; an error reply raises ``redis.ResponseError`` once the reply is read whole."""
    reply = _read_value(reader)
    if isinstance(reply, redis.ResponseError):
        raise reply
    return reply


def _read_value(reader: Any) -> Any:
    """One RESP2 value; an error comes back as a ``redis.ResponseError`` instance, as
    redis-py returns one nested in an array, so the connection is never left mid-reply."""
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise EOFError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data = reader.read(length + 2)
        if len(data) != length + 2:
            raise EOFError("Redis closed the connection")
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_value(reader) for _ in range(count)]
    if kind == b"+":
        return rest
    if kind == b"-":
        return redis.ResponseError(rest.decode("utf-8", "replace"))
    raise redis.ConnectionError(f"unexpected Redis reply {line[:40]!r}")


_raw: weakref.WeakKeyDictionary[redis.Redis, RawConnections] = weakref.WeakKeyDictionary()


def register_script(client: redis.Redis, script: str) -> RawScript:
    """``client.register_script(script)``, with the calls made over :class:`RawConnections`.

    One set of raw connections per client object, as redis-py keeps one pool per client
    (they go when the client goes).
    """
    with _lock:
        connections = _raw.get(client)
        if connections is None:
            connections = RawConnections(client)
            _raw[client] = connections
    return RawScript(connections, script, client.register_script(script))
