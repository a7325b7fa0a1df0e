"""The raw RESP2 script path: reply parsing and argument encoding, as redis-py does them."""

from __future__ import annotations

import io

import pytest
import redis
from payfn_shared.platform.redis_client import _encode, _read_reply


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b":42\r\n", 42),
        (b":-7\r\n", -7),
        (b"$5\r\nCLOSE\r\n", b"CLOSE"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"+OK\r\n", b"OK"),
        (b"*3\r\n:1\r\n$4\r\nOPEN\r\n*2\r\n:2\r\n$-1\r\n", [1, b"OPEN", [2, None]]),
        (b"$6\r\na\r\nb\r\n\r\n", b"a\r\nb\r\n"),
    ],
)
def test_replies_are_parsed_to_the_values_redis_py_returns(wire: bytes, value: object) -> None:
    assert _read_reply(io.BytesIO(wire)) == value


def test_an_error_reply_is_a_response_error_and_a_cut_reply_is_end_of_file() -> None:
    with pytest.raises(redis.ResponseError, match="NOSCRIPT"):
        _read_reply(io.BytesIO(b"-NOSCRIPT No matching script\r\n"))
    nested = io.BytesIO(b"*2\r\n-ERR inner\r\n:5\r\n:6\r\n")
    inner, five = _read_reply(nested)
    assert isinstance(inner, redis.ResponseError) and str(inner) == "ERR inner" and five == 5
    assert _read_reply(nested) == 6, "the whole array was read: the next reply starts where it ends"
    with pytest.raises(EOFError):
        _read_reply(io.BytesIO(b""))
    with pytest.raises(EOFError):
        _read_reply(io.BytesIO(b"$10\r\nshort\r\n"))


def test_arguments_are_encoded_as_redis_py_encodes_them() -> None:
    assert [_encode(v) for v in (b"k", "m\u00e9", 5, 2.5, 1e-05)] == [b"k", "m\u00e9".encode(), b"5", b"2.5",
                                                                   b"1e-05"]
    with pytest.raises(redis.DataError):
        _encode(True)
