"""Frames between a function host and its execution environments.

One frame = an 8-byte header (two big-endian uint32: length of the metadata, length
of the body), the metadata as JSON (orjson) and the body as raw bytes. The body is
kept apart from the metadata so that the invocation payload and the handler's
result cross the socket exactly as the caller sent them / the handler produced them,
without being re-encoded inside another JSON document.

Only the standard library and orjson are imported: the environment process imports
this module before the function's own code, and every import here is cold-start time.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson

HEADER = struct.Struct("!II")
MAX_FRAME = 64 * 1024 * 1024


class FrameError(ConnectionError):
    """The peer closed the socket or sent something that is not a frame."""


def encode_frame(meta: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame as bytes, ready for a single ``send``."""
    meta_bytes = orjson.dumps(meta)
    return HEADER.pack(len(meta_bytes), len(body)) + meta_bytes + body


def split_frames(buffer: bytearray) -> list[tuple[dict[str, Any], bytes]]:
    """Remove every complete frame from ``buffer`` (in place); a partial one stays."""
    frames = []
    offset = 0
    size = len(buffer)
    while size - offset >= HEADER.size:
        meta_len, body_len = HEADER.unpack_from(buffer, offset)
        if meta_len + body_len > MAX_FRAME:
            raise FrameError(f"frame of {meta_len + body_len} bytes exceeds {MAX_FRAME}")
        end = offset + HEADER.size + meta_len + body_len
        if end > size:
            break
        meta_end = offset + HEADER.size + meta_len
        frames.append((orjson.loads(buffer[offset + HEADER.size:meta_end]), bytes(buffer[meta_end:end])))
        offset = end
    if offset:
        del buffer[:offset]
    return frames


class FrameReader:
    """Blocking frame reader for the environment side, which has nothing else to do.

    It reads whatever the socket holds into a buffer (usually the whole frame in one
    ``recv``), so an invocation costs one system call to receive rather than three.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.frames: list[tuple[dict[str, Any], bytes]] = []

    def read(self) -> tuple[dict[str, Any], bytes]:
        while not self.frames:
            chunk = self.sock.recv(256 * 1024)
            if not chunk:
                raise FrameError("peer closed the connection")
            self.buffer += chunk
            self.frames = split_frames(self.buffer)
        return self.frames.pop(0)
