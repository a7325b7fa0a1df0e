"""The invocation path of a function host: pools, platform logs, metrics, code reload.

``FunctionHost`` owns one ``FunctionPool`` per function and runs an invocation the
way Lambda's platform does around the runtime: reserve an environment (cold start
if a new one is needed), send the event (the environment logs START), wait at most
the function's Timeout, log END and REPORT, count it, and give the environment back
(or retire it).

A maintenance task, once per ``runtime_code_check_seconds``, fingerprints each code
and layer folder (in a thread, off the event loop) and retires the environments of
functions whose code changed, then reaps environments idle for longer than
``runtime_idle_seconds``. Fingerprints are (newest mtime, file count, total size) of
the tree without ``__pycache__`` and dot-folders: a stat per file, cheap for a
function folder, and it notices edits, additions and deletions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.runtime import logs
from infra.runtime.config import HostConfig
from infra.runtime.environment import InitFailed
from infra.runtime.functions import FunctionDefinition
from infra.runtime.metrics import FunctionMetrics, HttpRouteMetrics, RuntimeMetrics
from infra.runtime.pool import FunctionPool, Throttled

log = logging.getLogger("payfn.runtime")

Signature = tuple[int, int, int]


def tree_signature(root: Path) -> Signature:
    """(newest mtime in ns, number of files, total size) of a folder, ignoring caches."""
    newest = count = size = 0
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                stat = entry.stat()
            except FileNotFoundError:
                continue
            count += 1
            size += stat.st_size
            newest = max(newest, stat.st_mtime_ns)
    return newest, count, size


def new_request_id() -> str:
    """A random UUID (version 4 layout) for a request id.

    ``uuid.uuid4()`` reads the OS's CSPRNG with a system call each time; a request id
    needs uniqueness, not secrecy, and this runs once per invocation.
    """
    value = (random.getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class BatchedStdout:
    """END/REPORT lines, written to fd 1 once per event-loop iteration.

    Under load many invocations finish in one iteration; one ``write`` for all of them
    costs far less than a system call per line (see ``infra.runtime.logs``).
    """

    def __init__(self) -> None:
        self._pending: list[str] = []

    def __call__(self, text: str) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self._pending.append(text)

    def flush(self) -> None:
        data = "".join(self._pending).encode()
        self._pending.clear()
        try:
            while data:
                data = data[os.write(sys.stdout.fileno(), data):]
        except OSError:
            # Nobody reads the log any more (e.g. the supervisor's pipe closed): keep serving.
            pass


@dataclass(frozen=True)
class Invocation:
    """The result of one synchronous invocation, ready for the Invoke API."""

    request_id: str
    body: bytes
    function_error: str | None
    log_result: str | None = None
    status_code: int | None = None
    timed_out: bool = False


class Throttle(Exception):
    """The invocation was throttled; ``reserved`` says whether by the function's own limit."""

    def __init__(self, reserved: bool) -> None:
        super().__init__("Rate Exceeded.")
        self.reserved = reserved


class HostedFunction:
    """A function of this host: its definition, pool and metric children."""

    def __init__(self, definition: FunctionDefinition, config: HostConfig, metrics: FunctionMetrics,
                 http: HttpRouteMetrics, extra_env: dict[str, str] | None = None) -> None:
        self.definition = definition
        # ReservedConcurrentExecutions 0 is Lambda's way to disable a function: it throttles everything.
        reserved = definition.reserved_concurrency
        limit = config.runtime_max_environments if reserved is None else reserved
        self.pool = FunctionPool(definition, limit, config.runtime_init_timeout_seconds, extra_env,
                                 max_initialising=config.runtime_max_initialising or None)
        self.metrics = metrics
        self.http = http
        self.code_signature: tuple[Signature, ...] | None = None
        # Read at scrape time: nothing to update on the invocation path.
        metrics.concurrent.set_function(lambda: self.pool.in_use)
        metrics.environments.set_function(lambda: self.pool.environments)


class FunctionHost:
    """Runs the invocations of a set of functions."""

    def __init__(self, definitions: Iterable[FunctionDefinition], config: HostConfig, metrics: RuntimeMetrics,
                 write: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.write = write or BatchedStdout()
        self.functions: dict[str, HostedFunction] = {}
        self._names: dict[str, HostedFunction] = {}
        extra_env = {}
        if metrics.multiprocess_dir is not None:
            extra_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics.multiprocess_dir)
        for definition in definitions:
            application = (definition.service or definition.function_name).lower()
            hosted = HostedFunction(definition, config,
                                    metrics.for_function(definition.logical_id, definition.service),
                                    metrics.http_for(application, definition.api_paths), extra_env)
            self.functions[definition.logical_id] = hosted
            for name in (definition.logical_id, definition.function_name, definition.arn):
                self._names[name] = hosted
        self._background: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None

    def resolve(self, name: str) -> HostedFunction | None:
        """A function by logical id, FunctionName, ARN or partial ARN (``$LATEST`` qualifier allowed)."""
        hosted = self._names.get(name)
        if hosted is not None:
            return hosted
        if ":function:" in name:
            name = name.split(":function:", 1)[1]
        base, _, qualifier = name.partition(":")
        if qualifier not in ("", "$LATEST"):
            return None
        return self._names.get(base)

    async def invoke(
        self,
        hosted: HostedFunction,
        payload: bytes,
        client_context: dict[str, Any] | None = None,
        queue_wait: float | None = 0.0,
        request_id: str | None = None,
        tail: bool = False,
    ) -> Invocation:
        """One invocation. Raises ``Throttle`` when no environment is available.

        ``tail`` (the Invoke API's ``LogType: Tail``) fills ``Invocation.log_result``
        with the last 4 KB of the invocation's log, base64-encoded, as Lambda does.
        """
        definition = hosted.definition
        metrics = hosted.metrics
        pool = hosted.pool
        request_id = request_id or new_request_id()
        try:
            environment, cold = await pool.acquire(queue_wait)
        except Throttled:
            metrics.throttles.inc()
            raise Throttle(reserved=definition.reserved_concurrency is not None) from None
        except InitFailed as failure:
            lines = logs.start_line(request_id) + logs.end_line(request_id) + logs.InvocationReport(
                request_id, 0.0, definition.memory_size, 0, init_duration_ms=failure.init_ms, status="error",
                error_type=failure.error_type).line()
            self.write(lines)
            metrics.invocations.inc()
            metrics.errors.inc()
            metrics.cold_starts.inc()
            return Invocation(request_id, failure.body, "Unhandled", logs.tail(lines) if tail else None)
        started = time.perf_counter()
        outcome = await environment.invoke(request_id, payload, definition.timeout, definition.arn,
                                           client_context, tail)
        duration = time.perf_counter() - started
        pool.release(environment, outcome.reusable)
        report = logs.InvocationReport(
            request_id, duration * 1000, definition.memory_size, -(-outcome.rss_kb // 1024),
            init_duration_ms=environment.init_ms if cold else None, status=outcome.status,
            error_type=outcome.error_type if outcome.status else None,
        )
        lines = logs.end_line(request_id) + report.line()
        self.write(lines)
        metrics.invocations.inc()
        metrics.duration.observe(duration)
        if cold:
            metrics.cold_starts.inc()
            metrics.init_duration.observe(environment.init_ms / 1000)
        if not outcome.ok:
            metrics.errors.inc()
            if outcome.status == "timeout":
                metrics.timeouts.inc()
        log_result = None
        if tail:
            log_result = logs.tail((outcome.log or logs.start_line(request_id)) + lines)
        return Invocation(request_id, outcome.body, None if outcome.ok else "Unhandled", log_result,
                          outcome.status_code, outcome.status == "timeout")

    def invoke_async(self, hosted: HostedFunction, payload: bytes,
                     client_context: dict[str, Any] | None = None) -> str:
        """An ``Event`` invocation: queued (never throttled), run in the background."""
        request_id = new_request_id()
        task = asyncio.get_running_loop().create_task(
            self.invoke(hosted, payload, client_context, queue_wait=None, request_id=request_id))
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return request_id

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background invocation or prewarm failed: %r", task.exception())

    def _signatures(self) -> dict[Path, Signature]:
        folders = {folder for hosted in self.functions.values() for folder in hosted.definition.watched_dirs}
        return {folder: tree_signature(folder) for folder in folders}

    @staticmethod
    def _code_signature(hosted: HostedFunction, signatures: dict[Path, Signature]) -> tuple[Signature, ...]:
        return tuple(signatures[folder] for folder in hosted.definition.watched_dirs)

    async def start(self) -> None:
        """Fingerprint the code now, so a change before the first check is noticed; start maintenance."""
        signatures = await asyncio.to_thread(self._signatures)
        for hosted in self.functions.values():
            hosted.code_signature = self._code_signature(hosted, signatures)
        loop = asyncio.get_running_loop()
        self._maintenance = loop.create_task(self._maintain())
        if self.config.runtime_prewarm:
            for hosted in self.functions.values():
                task = loop.create_task(hosted.pool.prewarm(self.config.runtime_prewarm))
                self._background.add(task)
                task.add_done_callback(self._background_done)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.config.runtime_code_check_seconds)
            try:
                await self.check_code()
                for hosted in self.functions.values():
                    reaped = await hosted.pool.reap_idle(self.config.runtime_idle_seconds)
                    if reaped:
                        log.info("%s: reaped %d idle environment(s)", hosted.definition.logical_id, reaped)
            except Exception:
                log.exception("maintenance pass failed")

    async def check_code(self) -> list[str]:
        """Retire the environments of functions whose code or layers changed; return their ids."""
        signatures = await asyncio.to_thread(self._signatures)
        changed = []
        for logical_id, hosted in self.functions.items():
            signature = self._code_signature(hosted, signatures)
            if signature != hosted.code_signature:
                hosted.code_signature = signature
                await hosted.pool.retire_all()
                changed.append(logical_id)
        if changed:
            log.info("code changed, warm environments retired: %s", ", ".join(changed))
        return changed

    @property
    def in_flight(self) -> int:
        return sum(hosted.pool.in_use for hosted in self.functions.values())

    async def close(self, grace: float = 5.0) -> None:
        """Stop maintenance, let running invocations finish (up to ``grace`` s), kill every environment."""
        if self._maintenance is not None:
            self._maintenance.cancel()
        deadline = time.monotonic() + grace
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for hosted in self.functions.values():
            await hosted.pool.close()
