"""One execution environment: a warm worker process and the host's end of its socket.

An ``Environment`` is one worker process (``infra.runtime.worker``) plus the host's
end of a Unix socketpair. Frames (``infra.runtime.protocol``) carry invocations and
results; the host reads them with an asyncio protocol, so a thousand environments
cost no thread. The worker is spawned once and reused warm: no process is created
per invocation.

Timeouts and crashes are contained by killing the worker's process group; the pool
(``infra.runtime.pool``) then frees the slot and the next request gets a fresh (cold)
environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from infra.runtime.functions import FunctionDefinition, new_log_stream_name
from infra.runtime.protocol import FrameError, encode_frame, split_frames


@dataclass(frozen=True)
class Outcome:
    """How one invocation ended, as the Invoke API and the REPORT line need it.

    ``error_type`` is set for every failure; ``status`` only for the failures Lambda
    marks in REPORT (``timeout``, ``error`` for a runtime exit); ``reusable`` says
    whether the environment survived.
    """

    body: bytes
    ok: bool
    rss_kb: int
    reusable: bool
    error_type: str | None = None
    status: str | None = None
    log: str | None = None
    status_code: int | None = None


class InitFailed(Exception):
    """The environment could not initialise; ``body`` is Lambda's error payload."""

    def __init__(self, body: bytes, error_type: str, init_ms: float) -> None:
        super().__init__(error_type)
        self.body = body
        self.error_type = error_type
        self.init_ms = init_ms


def _error_body(request_id: str | None, error_type: str, message: str) -> bytes:
    prefix = f"RequestId: {request_id} Error: " if request_id else "Error: "
    return orjson.dumps({"errorType": error_type, "errorMessage": prefix + message})


def expire(future: asyncio.Future[Any]) -> None:
    """Fail ``future`` with ``TimeoutError`` unless it is already done (a timer callback)."""
    if not future.done():
        future.set_exception(TimeoutError())


def exit_reason(returncode: int | None) -> str:
    """The runtime-exit wording Lambda uses (``exit status 1``, ``signal: killed``…)."""
    if returncode is None:
        return "Runtime exited without providing a reason"
    if returncode < 0:
        name = signal.strsignal(-returncode) or f"signal {-returncode}"
        return f"Runtime exited with error: signal: {name.lower()}"
    if returncode == 0:
        return "Runtime exited without providing a reason"
    return f"Runtime exited with error: exit status {returncode}"


class _FrameProtocol(asyncio.Protocol):
    """Host end of the socketpair: hands each frame to whoever awaits the next one."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None
        self.pending: deque[tuple[dict[str, Any], bytes]] = deque()
        self.closed = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            frames = split_frames(self.buffer)
        except (FrameError, ValueError) as exc:
            self._fail(FrameError(str(exc)))
            if self.transport is not None:
                self.transport.close()
            return
        self.pending.extend(frames)
        if self.pending and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.pending.popleft())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(FrameError("environment closed its socket"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def next_frame(self) -> asyncio.Future[tuple[dict[str, Any], bytes]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[dict[str, Any], bytes]] = loop.create_future()
        if self.pending:
            future.set_result(self.pending.popleft())
        elif self.closed:
            future.set_exception(FrameError("environment closed its socket"))
        else:
            self.waiter = future
        return future


class Environment:
    """One execution environment (a worker process) of one function."""

    def __init__(self, definition: FunctionDefinition, generation: int,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.definition = definition
        self.generation = generation
        self.extra_env = extra_env or {}
        self.log_stream_name = new_log_stream_name()
        self.process: subprocess.Popen[bytes] | None = None
        self.protocol = _FrameProtocol()
        self.init_ms = 0.0
        self.last_used = time.monotonic()
        self.rss_kb = 0

    @property
    def alive(self) -> bool:
        """Whether the worker still runs; its exit always closes the socket, so no syscall is needed."""
        return self.process is not None and not self.protocol.closed

    async def start(self, init_timeout: float) -> None:
        """Spawn the worker and wait for its init phase; raise ``InitFailed`` if it fails."""
        started = time.perf_counter()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        definition = self.definition
        args = [sys.executable, "-m", "infra.runtime.worker", "--fd", str(child.fileno()),
                "--host-pid", str(os.getpid())]
        for layer in definition.layer_dirs:
            args += ["--layer", str(layer)]
        # subprocess.Popen rather than the loop's subprocess API: Popen uses vfork, which
        # does not copy the host's page tables, so a cold start stalls the event loop for
        # about a millisecond instead of a fork's several to tens of milliseconds.
        try:
            self.process = subprocess.Popen(
                args,
                pass_fds=(child.fileno(),),
                cwd=definition.code_dir,
                env={**definition.environment(self.log_stream_name), **self.extra_env},
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: self.protocol, sock=parent)
        try:
            meta, body = await asyncio.wait_for(self.protocol.next_frame(), init_timeout)
        except TimeoutError:
            await self.kill()
            self.init_ms = (time.perf_counter() - started) * 1000
            raise InitFailed(
                _error_body(None, "Sandbox.Timedout", f"Init timed out after {init_timeout:.2f} seconds"),
                "Sandbox.Timedout", self.init_ms,
            ) from None
        except FrameError:
            returncode = await self.kill()
            self.init_ms = (time.perf_counter() - started) * 1000
            body = _error_body(None, "Runtime.ExitError", exit_reason(returncode))
            raise InitFailed(body, "Runtime.ExitError", self.init_ms) from None
        self.init_ms = (time.perf_counter() - started) * 1000
        self.rss_kb = int(meta.get("rss_kb", 0))
        if meta.get("type") != "ready":
            await self.kill()
            raise InitFailed(body, str(orjson.loads(body).get("errorType", "Runtime.Unknown")), self.init_ms)

    async def invoke(self, request_id: str, payload: bytes, timeout: float, arn: str,
                     client_context: dict[str, Any] | None, tail: bool = False) -> Outcome:
        """Run one invocation; kill the environment if it overruns ``timeout`` or dies.

        ``tail`` asks the environment for the invocation's output (``Outcome.log``).
        """
        meta: dict[str, Any] = {"id": request_id, "arn": arn,
                                "deadline_ms": int((time.time() + timeout) * 1000)}
        if client_context is not None:
            meta["client_context"] = client_context
        if tail:
            meta["tail"] = True
        transport = self.protocol.transport
        if transport is None:
            raise FrameError("environment is not connected")
        frame = self.protocol.next_frame()
        transport.write(encode_frame(meta, payload))
        # A timer handle rather than asyncio.wait_for: this is the hot path, and the
        # handle costs one heap entry where wait_for adds a waiter future and callbacks.
        timer = asyncio.get_running_loop().call_later(timeout, expire, frame)
        try:
            reply, body = await frame
        except TimeoutError:
            await self.kill()
            message = f"Task timed out after {timeout:.2f} seconds"
            return Outcome(_error_body(request_id, "Sandbox.Timedout", message), ok=False, rss_kb=self.rss_kb,
                           reusable=False, error_type="Sandbox.Timedout", status="timeout")
        except FrameError:
            returncode = await self.kill()
            return Outcome(_error_body(request_id, "Runtime.ExitError", exit_reason(returncode)), ok=False,
                           rss_kb=self.rss_kb, reusable=False, error_type="Runtime.ExitError", status="error")
        finally:
            timer.cancel()
        self.rss_kb = int(reply.get("rss_kb", 0))
        if self.rss_kb > self.definition.memory_size * 1024:
            await self.kill()
            message = f"Runtime exited with error: signal: killed (max RSS {self.rss_kb // 1024} MB " \
                      f"over MemorySize {self.definition.memory_size} MB)"
            return Outcome(_error_body(request_id, "Runtime.OutOfMemory", message), ok=False,
                           rss_kb=self.rss_kb, reusable=False, error_type="Runtime.OutOfMemory",
                           status="error")
        if reply.get("ok"):
            return Outcome(body, ok=True, rss_kb=self.rss_kb, reusable=True, log=reply.get("log"),
                           status_code=reply.get("status"))
        return Outcome(body, ok=False, rss_kb=self.rss_kb, reusable=True, error_type="Unhandled",
                       log=reply.get("log"))

    async def kill(self) -> int | None:
        """Kill the worker and anything it started (its session); return its exit status."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            # The whole session, so a handler's own child processes die with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        returncode = process.poll()
        if returncode is None:
            returncode = await asyncio.to_thread(process.wait)
        if self.protocol.transport is not None:
            self.protocol.transport.close()
        return returncode
