"""The one open-model load generator of the drills and the benchmarks (k6's arrival-rate model).

Iterations ARRIVE at the rate of a stage profile whatever the system does, so a slow
answer never delays the next arrival and every latency includes the queueing it caused
(no coordinated omission). At most ``max_concurrency`` iterations are in flight; an
arrival that finds none free is dropped and counted (k6's ``dropped_iterations``): a
system that cannot keep up shows as a lower achieved rate, never as a quietly slower
generator. One asyncio loop schedules the arrivals; an iteration is a coroutine (the
benchmarks' raw keep-alive connections, :mod:`infra.drills.load_http`) or a blocking
function on a fixed pool of threads (:class:`BlockingLoad`, the drills' clients).
Every request an iteration makes is noted as a :class:`Sample` in one
:class:`LoadResult`: statuses, latencies, percentiles and the achieved rate come from it.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import uvloop

#: (seconds, target rate at the end of the stage): the rate moves linearly across a stage.
Stage = tuple[float, float]
#: The message of API Gateway's answer to a Lambda throttle (the function never ran).
THROTTLE_MESSAGE = "Too Many Requests"
#: How often the arrival loop wakes to let the due arrivals in.
TICK_SECONDS = 0.002


@dataclass(frozen=True, slots=True)
class Sample:
    """One HTTP answer of the load: when its request started (monotonic), what, how it ended."""

    at: float
    operation: str
    status: int
    seconds: float
    code: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def throttled(self) -> bool:
        return self.status == 429 and self.code == THROTTLE_MESSAGE


@dataclass
class LoadResult:
    """What one run did: arrivals, outcomes of the iterations and every request's :class:`Sample`."""

    name: str
    planned: int = 0
    started: int = 0
    dropped: int = 0
    completed: int = 0
    failed_iterations: int = 0
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    client_cpu_seconds: float = 0.0
    peak_connections: int = 0
    #: Seconds since the start at which each iteration completed successfully.
    completions: list[float] = field(default_factory=list)
    #: Monotonic time of every arrival, dropped ones included.
    arrivals: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    #: What went wrong in failed iterations, as the iterations describe it.
    failures: list[str] = field(default_factory=list)
    origin: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def percentile(samples: list[float], q: float) -> float:
        """Nearest-rank percentile; NaN when there are no samples."""
        if not samples:
            return float("nan")
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def note(self, sample: Sample) -> None:
        """Record one request's answer (safe from any thread)."""
        with self.lock:
            self.samples.append(sample)
            self.latencies.setdefault(sample.operation, []).append(sample.seconds)
            self.statuses[f"{sample.operation} {sample.status}"] += 1

    def fail(self, observed: str) -> None:
        """Say why an iteration failed (it then returns False)."""
        with self.lock:
            self.failures.append(observed)

    def requests(self) -> int:
        return sum(self.statuses.values())

    def errors(self) -> int:
        return sum(n for key, n in self.statuses.items() if not key.split()[-1].startswith("2"))

    def achieved_rate(self) -> float:
        """Completed iterations per second of the run."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    @property
    def in_flight(self) -> int:
        return self.started - self.completed - self.failed_iterations

    def answers(self, start: float = 0.0, end: float = float("inf")) -> list[Sample]:
        """Answers to requests that started in ``[start, end)`` (monotonic times)."""
        with self.lock:
            return [s for s in self.samples if start <= s.at < end]

    def arrived(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for at in self.arrivals if start <= at < end)


#: A blocking iteration's job: its number, its result, and the loop and future awaiting it.
_Job = tuple[int, LoadResult, asyncio.AbstractEventLoop, "asyncio.Future[bool]"]
#: One iteration: its number and the result it notes its requests in; True when it succeeded.
Iteration = Callable[[int, LoadResult], Awaitable[bool]]


def planned_arrivals(stages: Sequence[Stage], start_rate: float) -> Callable[[float], float]:
    """Arrivals due by ``t`` seconds: the integral of the rate, linear within each stage."""
    edges = []
    begin, rate = 0.0, start_rate
    for seconds, target in stages:
        edges.append((begin, seconds, rate, target))
        begin += seconds
        rate = target

    def planned(t: float) -> float:
        done = 0.0
        for start, seconds, low, high in edges:
            if t <= start:
                break
            span = min(t - start, seconds)
            done += span * (low + (high - low) * span / seconds / 2) if seconds else 0.0
        return done

    return planned


class OpenLoad:
    """Runs ``iteration`` at an arrival-rate profile, at most ``max_concurrency`` at a time."""

    def __init__(self, iteration: Iteration, max_concurrency: int, drain_seconds: float) -> None:
        self.iteration = iteration
        self.max_concurrency = max_concurrency
        self.drain_seconds = drain_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False
        self.result = LoadResult("load")

    async def _one(self, index: int, result: LoadResult) -> None:
        try:
            ok = await self.iteration(index, result)
        except Exception as error:  # a bug in an iteration must show in the result, not vanish in a task
            result.fail(f"iteration {index}: {type(error).__name__}: {error}")
            ok = False
        if ok:
            result.completed += 1
            result.completions.append(time.monotonic() - result.origin)
        else:
            result.failed_iterations += 1

    def _arrive(self, index: int, result: LoadResult, tasks: set[asyncio.Task[None]]) -> None:
        result.planned += 1
        with result.lock:
            result.arrivals.append(time.monotonic())
        if result.in_flight >= self.max_concurrency:
            result.dropped += 1
            return
        result.started += 1
        task = asyncio.create_task(self._one(index, result))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _drain(self, result: LoadResult, tasks: set[asyncio.Task[None]]) -> None:
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=self.drain_seconds)
        self._finished = not pending
        result.seconds = time.monotonic() - result.origin

    async def run_async(self, name: str, stages: Sequence[Stage], start_rate: float,
                        on_tick: Callable[[float], None] | None = None,
                        result: LoadResult | None = None) -> LoadResult:
        """Arrivals along ``stages`` (``start_rate`` at t=0) until their end or :meth:`stop`."""
        result = self.result = result or LoadResult(name)
        result.origin = time.monotonic()
        tasks: set[asyncio.Task[None]] = set()
        cpu_before = own_cpu_seconds()
        planned = planned_arrivals(stages, start_rate)
        total = sum(seconds for seconds, _ in stages)
        while (now := time.monotonic() - result.origin) < total and not self._stop.is_set():
            due = int(planned(now))
            while result.planned < due:
                self._arrive(result.planned + 1, result, tasks)
            if on_tick is not None:
                on_tick(now)
            await asyncio.sleep(TICK_SECONDS)
        result.planned = max(result.planned, int(planned(min(now, total))))
        await self._drain(result, tasks)
        result.client_cpu_seconds = own_cpu_seconds() - cpu_before
        return result

    async def burst_async(self, name: str, count: int) -> LoadResult:
        """``count`` iterations arriving at the same moment (up to the concurrency cap)."""
        result = self.result = LoadResult(name)
        tasks: set[asyncio.Task[None]] = set()
        for index in range(count):
            self._arrive(index, result, tasks)
        await self._drain(result, tasks)
        return result

    def run(self, name: str, stages: Sequence[Stage], start_rate: float,
            on_tick: Callable[[float], None] | None = None) -> LoadResult:
        """Run one profile to its end (blocking); k6 stage semantics."""
        return uvloop.run(self.run_async(name, stages, start_rate, on_tick))

    def burst(self, name: str, count: int) -> LoadResult:
        return uvloop.run(self.burst_async(name, count))

    def start(self, name: str, rate: float) -> LoadResult:
        """Arrivals at a steady ``rate`` in the background until :meth:`stop`; the result fills as it runs."""
        self._stop.clear()
        result = self.result = LoadResult(name)
        stages = [(float("inf"), rate)]
        self._thread = threading.Thread(
            target=lambda: uvloop.run(self.run_async(name, stages, rate, result=result)),
            name=f"{name}-arrivals", daemon=True)
        self._thread.start()
        return result

    def stop(self) -> bool:
        """Stop the arrivals and wait for the arrived iterations; True when every one ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self._finished


class ThreadedIterations:
    """A blocking iteration on ``threads`` threads of its own, as an :data:`Iteration`.

    The drills' clients block (one HTTP connection per thread); ``finish`` runs on each
    thread as it ends (the client closes that thread's connection).
    """

    def __init__(self, work: Callable[[int, LoadResult], bool], threads: int,
                 finish: Callable[[], None] = lambda: None) -> None:
        self.work = work
        self.finish = finish
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._serve, name=f"iteration-{number}", daemon=True)
                         for number in range(threads)]
        for thread in self._threads:
            thread.start()

    def __call__(self, index: int, result: LoadResult) -> Awaitable[bool]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._jobs.put((index, result, loop, future))
        return future

    def _serve(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                index, result, loop, future = job
                try:
                    outcome: bool | Exception = self.work(index, result)
                except Exception as error:  # reported through the future, like the iteration's own failure
                    outcome = error
                try:
                    loop.call_soon_threadsafe(_settle, future, outcome)
                except RuntimeError:  # the loop is closed: the run stopped waiting for this job
                    continue
        finally:
            self.finish()

    def close(self, timeout: float) -> bool:
        """End the threads once their jobs are done; True when all ended within ``timeout``."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)


class BlockingLoad:
    """An :class:`OpenLoad` of a blocking iteration on ``threads`` threads, run once (the drills)."""

    def __init__(self, work: Callable[[int, LoadResult], bool], threads: int, drain_seconds: float,
                 finish: Callable[[], None] = lambda: None) -> None:
        self.drain_seconds = drain_seconds
        self._iterations = ThreadedIterations(work, threads, finish)
        self._load = OpenLoad(self._iterations, threads, drain_seconds)

    @property
    def result(self) -> LoadResult:
        return self._load.result

    def start(self, name: str, rate: float) -> LoadResult:
        """Arrivals at ``rate`` in the background until :meth:`stop`."""
        return self._load.start(name, rate)

    def stop(self) -> bool:
        """Stop the arrivals, let the arrived iterations finish; True when every thread ended."""
        finished = self._load.stop()
        return self._iterations.close(self.drain_seconds) and finished

    def burst(self, name: str, count: int) -> LoadResult:
        """``count`` iterations at the same moment (at most ``threads``), waited for."""
        result = self._load.burst(name, count)
        self._iterations.close(self.drain_seconds)
        return result


def _settle(future: asyncio.Future[bool], outcome: bool | Exception) -> None:
    if future.done():  # the run stopped waiting for it
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def acceptable(samples: Sequence[Sample]) -> bool:
    """Every answer 2xx or a throttle (which the flow retried: a failed flow fails on its own)."""
    return all(s.ok or s.throttled for s in samples)


def describe(samples: Sequence[Sample]) -> str:
    """Count, statuses and latency of some answers, for a report line."""
    if not samples:
        return "no requests"
    ordered = sorted(s.seconds for s in samples)

    def at(q: float) -> float:
        return LoadResult.percentile(ordered, q) * 1000

    statuses = Counter(f"{s.operation} {s.status}" for s in samples)
    return (f"{len(samples)} requests, statuses {dict(sorted(statuses.items()))},"
            f" latency p50/p95/max {at(0.5):.0f}/{at(0.95):.0f}/{ordered[-1] * 1000:.0f} ms")


def timeline(samples: Sequence[Sample], origin: float, bucket: float = 5.0) -> str:
    """Answers per ``bucket`` seconds since ``origin`` (non-2xx counted apart, slowest shown): shows
    WHEN in an outage something went wrong, which a total cannot."""
    buckets: dict[int, list[Sample]] = {}
    for sample in samples:
        buckets.setdefault(int((sample.at - origin) // bucket), []).append(sample)
    parts = []
    for number in sorted(buckets):
        group = buckets[number]
        bad = Counter(s.status for s in group if not s.ok)
        parts.append(f"{number * bucket:g}-{(number + 1) * bucket:g}s: {len(group) - sum(bad.values())} ok"
                     + "".join(f" {n}×{status}" for status, n in sorted(bad.items()))
                     + f" max {max(s.seconds for s in group):.1f}s")
    return "; ".join(parts)


def own_cpu_seconds() -> float:
    """This process's user+system CPU time (from /proc, like the rest of the report)."""
    with open("/proc/self/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
