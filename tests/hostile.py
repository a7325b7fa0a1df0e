"""Raw-socket probes of hostile HTTP input: what a misbehaving client sends, byte for byte.

Each probe returns the status line's code the listener answered (0: no answer, the
connection was reset or closed silently), so a test can say what every listener must
answer for every class of input.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def __str__(self) -> str:
        return f"{self.status} {self.body[:200]!r}"


def _read_answer(sock: socket.socket, timeout: float) -> Answer:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
    except (ConnectionResetError, TimeoutError):
        pass
    parts = data.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0
    return Answer(status, body)


def exchange(host: str, port: int, raw: bytes, timeout: float = 10.0) -> Answer:
    """Send ``raw`` on a fresh connection and read one answer."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(raw)
        return _read_answer(sock, timeout)


def request(method: str, path: str, host: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> bytes:
    """A well-formed HTTP/1.1 request's bytes (with Content-Length when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


def chunked_upload(host: str, port: int, path: str, total: int, timeout: float = 20.0) -> Answer:
    """POST ``total`` bytes as 64 KiB chunks with no Content-Length, reading the answer at the end."""
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n".encode())
            for _ in range(total // 65536):
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
        except (ConnectionResetError, BrokenPipeError):
            pass
        return _read_answer(sock, timeout)


def stalled_body(host: str, port: int, path: str, timeout: float = 60.0) -> Answer:
    """Announce 100 bytes, send 10, then wait for whatever the listener decides."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(head + b'{"a": "123')
        return _read_answer(sock, timeout)


def deep_json(levels: int) -> bytes:
    """``levels`` nested arrays: about 2 bytes a level."""
    return b"[" * levels + b"]" * levels
