"""The per-function pool that schedules execution environments under Lambda's concurrency model.

A ``FunctionPool`` runs each environment one invocation at a time, caps the environments
at the function's limit (initialising ones count), makes a request wait at most
``queue_wait`` for a free one before throttling it (``Throttled``), reuses the most
recently used idle environment first so surplus ones can be reaped, and retires
environments of an older code generation.

Scheduling rules in full: docs/RUNTIME.md#infraruntimepool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping

from infra.runtime.environment import Environment, InitFailed, expire
from infra.runtime.functions import FunctionDefinition

log = logging.getLogger("payfn.runtime")


class Throttled(Exception):
    """No environment became free in time and the concurrency limit is reached."""


class FunctionPool:
    """The environments of one function and its concurrency accounting."""

    def __init__(self, definition: FunctionDefinition, limit: int, init_timeout: float,
                 extra_env: Mapping[str, str] | None = None, max_initialising: int | None = None) -> None:
        """``extra_env`` is added to every environment's variables by the host (not the template),
        e.g. ``PROMETHEUS_MULTIPROC_DIR`` (see ``infra.runtime.metrics``).

        ``max_initialising`` caps the cold starts in progress at once (None: no cap).
        A burst would otherwise start one environment per waiting request, each
        spending a second of CPU on imports, on a machine whose few cores are what
        the warm environments need to drain that very burst; capped, a request waits
        (up to the init timeout: it is under the concurrency limit, so not throttled)
        for whichever comes first: a warm environment given back or a cold start of
        its own once one finishes. Lambda, too, scales a
        function up at a bounded rate rather than all at once.
        """
        self.definition = definition
        self.extra_env = dict(extra_env or {})
        self.limit = limit
        self.init_timeout = init_timeout
        self.max_initialising = max_initialising
        self.generation = 0
        self.idle: list[Environment] = []
        self.busy: set[Environment] = set()
        self.in_use = 0
        self.initialising = 0
        self.waiters: deque[asyncio.Future[Environment | None]] = deque()

    async def acquire(self, queue_wait: float | None) -> tuple[Environment, bool]:
        """An environment reserved for one invocation and whether it is a cold start.

        ``queue_wait`` None waits without bound (asynchronous invocations, which Lambda
        queues rather than throttles). Raises ``Throttled`` or ``InitFailed``.
        """
        while self.idle:
            environment = self.idle.pop()
            if environment.alive and environment.generation == self.generation:
                self.in_use += 1
                self.busy.add(environment)
                return environment, False
            await environment.kill()
        over_limit = self.in_use >= self.limit
        if over_limit or not self._may_initialise():
            # Over the concurrency limit, a request is throttled after the queue wait,
            # as on Lambda. Under it, held back only by the cap on cold starts, it is
            # not over any limit: it waits as long as a cold start of its own may take.
            wait = queue_wait if over_limit or queue_wait is None else self.init_timeout
            if wait is not None and wait <= 0:
                raise Throttled(self.definition.logical_id)
            loop = asyncio.get_running_loop()
            future: asyncio.Future[Environment | None] = loop.create_future()
            self.waiters.append(future)
            timer = None if wait is None else loop.call_later(wait, expire, future)
            try:
                handed = await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._give_back(future.result())
                raise
            except TimeoutError:
                # release()/_free_slot() may have dequeued (and skipped) the expired waiter
                # between its timer firing and this coroutine resuming.
                with contextlib.suppress(ValueError):
                    self.waiters.remove(future)
                raise Throttled(self.definition.logical_id) from None
            finally:
                # A cancelled waiter stays queued, done: release() skips done waiters.
                if timer is not None:
                    timer.cancel()
            if handed is not None:
                self.busy.add(handed)
                return handed, False
            # Handed a slot (and an init reservation) to start an environment of our own.
        else:
            self.in_use += 1
            self.initialising += 1
        environment = Environment(self.definition, self.generation, self.extra_env)
        try:
            await environment.start(self.init_timeout)
        except BaseException:
            self.initialising -= 1
            self._free_slot()
            raise
        self.initialising -= 1
        self.busy.add(environment)
        self._start_waiter()
        return environment, True

    def _give_back(self, handed: Environment | None) -> None:
        """A waiter was handed something and then cancelled before using it."""
        if handed is None:
            self.initialising -= 1
            self._free_slot()
        else:
            self.busy.add(handed)
            self.release(handed, reusable=True)

    def _may_initialise(self) -> bool:
        return self.max_initialising is None or self.initialising < self.max_initialising

    def _start_waiter(self) -> None:
        """While slots and init reservations are free, let waiters (oldest first) start environments."""
        while self.waiters and self.in_use < self.limit and self._may_initialise():
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                self.initialising += 1
                waiter.set_result(None)

    async def prewarm(self, count: int) -> int:
        """Start up to ``count`` environments ahead of demand; return how many are ready.

        Each holds a concurrency slot while it initialises and then joins the idle list,
        so an invocation arriving meanwhile is never over the limit.
        """
        ready = 0
        for _ in range(min(count, self.limit - self.in_use - len(self.idle))):
            self.in_use += 1
            self.initialising += 1
            environment = Environment(self.definition, self.generation, self.extra_env)
            try:
                await environment.start(self.init_timeout)
            except InitFailed as failure:
                self.initialising -= 1
                self._free_slot()
                log.warning("%s: prewarm stopped, init failed: %s", self.definition.logical_id,
                            failure.body.decode(errors="replace"))
                break
            self.initialising -= 1
            self.busy.add(environment)
            self.release(environment, reusable=True)
            ready += 1
        return ready

    def release(self, environment: Environment, reusable: bool) -> None:
        """Give the environment back after an invocation (or retire it)."""
        environment.last_used = time.monotonic()
        self.busy.discard(environment)
        keep = reusable and environment.alive and environment.generation == self.generation
        if not keep:
            if environment.alive:
                asyncio.get_running_loop().create_task(environment.kill())
            self._free_slot()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(environment)
                return
        self.in_use -= 1
        self.idle.append(environment)

    def _free_slot(self) -> None:
        """A slot ends without an environment to pass on: a waiter may start a new one."""
        self.in_use -= 1
        self._start_waiter()

    async def reap_idle(self, idle_seconds: float) -> int:
        """Kill environments idle for longer than ``idle_seconds``; return how many."""
        cutoff = time.monotonic() - idle_seconds
        stale = [env for env in self.idle if env.last_used < cutoff or not env.alive]
        if not stale:
            return 0
        self.idle = [env for env in self.idle if env not in stale]
        for environment in stale:
            await environment.kill()
        return len(stale)

    async def retire_all(self) -> None:
        """The code changed: no current environment may serve another invocation."""
        self.generation += 1
        idle, self.idle = self.idle, []
        for environment in idle:
            await environment.kill()

    async def close(self) -> None:
        """The host stops: kill every environment, busy or idle."""
        await self.retire_all()
        busy, self.busy = self.busy, set()
        for environment in busy:
            await environment.kill()

    @property
    def environments(self) -> int:
        return self.in_use + len(self.idle)
