"""Scripts called over payfn's raw RESP2 connections answer exactly as through redis-py."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from payfn_shared.platform.redis_client import create_redis, register_script

from tests.integration.redis_support import private_redis

#: Every reply type the breaker and the rate limiter scripts return, and a nil.
SCRIPT = "return {tonumber(ARGV[1]) + 1, KEYS[1], {ARGV[2], 7}, redis.call('GET', KEYS[1])}"


def test_replies_match_redis_py_and_a_flushed_script_is_loaded_again(redis_client: redis.Redis) -> None:
    raw = register_script(redis_client, SCRIPT)
    through_redis_py = redis_client.register_script(SCRIPT)
    call = {"keys": ["payfn:test:raw-script"], "args": [41, "é"]}
    assert raw(**call) == through_redis_py(**call) == [42, b"payfn:test:raw-script", ["é".encode(), 7], None]
    redis_client.script_flush()
    assert raw(**call)[0] == 42, "NOSCRIPT: the script is sent again"


def test_a_restarted_redis_costs_one_reconnect_and_a_stopped_one_a_connection_error(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:
        script = register_script(create_redis(server.url), SCRIPT)
        assert script(keys=["k"], args=[1, "x"])[0] == 2
        server.stop()
        with pytest.raises(redis.ConnectionError):
            script(keys=["k"], args=[1, "x"])
        server.start()
        assert script(keys=["k"], args=[1, "x"])[0] == 2
