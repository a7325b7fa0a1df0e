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

import threading
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from payfn_shared.config import ConfigError, Settings, load_dataclass, load_settings

#: Environment prefix of :class:`RedisClientConfig` (e.g. ``PAYFN_REDIS_SOCKET_TIMEOUT_SECONDS``).
CONFIG_PREFIX = "PAYFN_REDIS_"


@dataclass(frozen=True)
class RedisClientConfig:
    """Client-side knobs (the address itself is in :class:`Settings`)."""

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
    cfg = config or load_dataclass(RedisClientConfig, prefix=CONFIG_PREFIX)
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


def reset_redis_clients() -> None:
    """Close and forget every cached client (tests that change the address use this)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()
