"""The open-model load generator: arrivals at the planned rate whatever the answers, the cap, the tally."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from infra.drills.load import (
    THROTTLE_MESSAGE,
    BlockingLoad,
    LoadResult,
    OpenLoad,
    Sample,
    ThreadedIterations,
    acceptable,
    describe,
    planned_arrivals,
    timeline,
)
from infra.drills.load_http import GatewayLoad


def test_planned_arrivals_integrate_a_linear_ramp_then_a_hold() -> None:
    planned = planned_arrivals([(10, 100), (5, 100)], 0)
    assert planned(0) == 0
    assert planned(5) == pytest.approx(125)
    assert planned(10) == pytest.approx(500)
    assert planned(15) == pytest.approx(1000)
    assert planned(99) == pytest.approx(1000)


def test_arrivals_keep_their_rate_however_slow_the_answers() -> None:
    async def slow(_: int, result: LoadResult) -> bool:
        await asyncio.sleep(0.4)
        return True

    result = OpenLoad(slow, max_concurrency=100, drain_seconds=5).run("slow", [(1.0, 40)], 40)
    assert result.planned == 40, "planned over the whole profile (k6: the last arrival is due at its end)"
    assert result.started in (39, 40) and result.dropped == 0
    assert result.completed == result.started and result.failed_iterations == 0
    spread = result.arrivals[-1] - result.arrivals[0]
    assert 0.85 <= spread <= 1.0, "the arrivals spread over the second, not held back by the answers"
    assert result.seconds >= 1.3, "the run waits for the arrived iterations"
    assert result.achieved_rate() == pytest.approx(result.completed / result.seconds)
    assert len(result.completions) == result.completed
    assert all(0.3 < t < result.seconds + 0.01 for t in result.completions)


def test_arrivals_beyond_the_concurrency_cap_are_dropped_and_counted() -> None:
    async def stuck(_: int, result: LoadResult) -> bool:
        await asyncio.sleep(1.0)
        return True

    result = OpenLoad(stuck, max_concurrency=5, drain_seconds=5).run("capped", [(0.5, 40)], 40)
    assert result.planned == 20
    assert result.started == 5 and result.dropped in (14, 15)
    assert len(result.arrivals) == result.started + result.dropped
    assert result.completed == 5


def test_failed_iterations_are_counted_with_what_went_wrong() -> None:
    async def flaky(index: int, result: LoadResult) -> bool:
        if index % 3 == 0:
            raise RuntimeError("boom")
        result.note(Sample(time.monotonic(), "authorize", 200 if index % 3 == 1 else 503, 0.01))
        return index % 3 == 1

    result = OpenLoad(flaky, max_concurrency=50, drain_seconds=5).run("flaky", [(0.3, 100)], 100)
    assert result.planned == 30 and result.started in (29, 30)
    indexes = range(1, result.started + 1)
    raised, ok = sum(i % 3 == 0 for i in indexes), sum(i % 3 == 1 for i in indexes)
    assert result.completed == ok and result.failed_iterations == result.started - ok
    assert len(result.failures) == raised and result.failures[0] == "iteration 3: RuntimeError: boom"
    assert result.statuses == {"authorize 200": ok, "authorize 503": result.started - ok - raised}
    assert result.requests() == result.started - raised and result.errors() == result.started - ok - raised
    assert len(result.latencies["authorize"]) == result.started - raised
    assert result.in_flight == 0


def test_blocking_iterations_run_in_the_background_until_stopped() -> None:
    ended: list[str] = []

    def work(index: int, result: LoadResult) -> bool:
        started = time.monotonic()
        time.sleep(0.05)
        result.note(Sample(started, "lookup", 200, time.monotonic() - started))
        return True

    def finish() -> None:
        ended.append(threading.current_thread().name)

    iterations = ThreadedIterations(work, threads=4, finish=finish)
    load = OpenLoad(iterations, max_concurrency=4, drain_seconds=5)
    result = load.start("background", 20)
    time.sleep(0.5)
    middle = time.monotonic()
    time.sleep(0.5)
    assert load.stop()
    assert iterations.close(5)
    assert len(ended) == 4, "each worker thread ran its finish"
    assert result is load.result
    assert 17 <= len(result.arrivals) <= 22
    assert result.completed == result.started == len(result.arrivals) - result.dropped
    assert result.in_flight == 0
    assert 0 < len(result.answers(end=middle)) < len(result.answers())
    assert 7 <= result.arrived(result.origin, middle) <= 12


def test_a_burst_arrives_at_once() -> None:
    running: list[int] = []
    peak: list[int] = [0]
    lock = threading.Lock()

    def work(index: int, _: LoadResult) -> bool:
        with lock:
            running.append(index)
            peak[0] = max(peak[0], len(running))
        time.sleep(0.2)
        with lock:
            running.remove(index)
        return True

    load = BlockingLoad(work, threads=6, drain_seconds=5)
    result = load.burst("burst", 6)
    assert result is load.result
    assert result.completed == 6 and result.dropped == 0
    assert peak[0] == 6


def test_samples_are_classified_and_described() -> None:
    samples = [Sample(10.0, "authorize", 200, 0.010), Sample(11.0, "capture", 201, 0.030),
               Sample(16.0, "authorize", 429, 0.002, THROTTLE_MESSAGE)]
    assert acceptable(samples)
    assert not acceptable([*samples, Sample(17.0, "refund", 429, 0.002, "RATE_LIMITED")])
    assert not acceptable([Sample(1.0, "refund", 503, 1.0)])
    assert describe([]) == "no requests"
    assert describe(samples) == ("3 requests, statuses"
                                 " {'authorize 200': 1, 'authorize 429': 1, 'capture 201': 1},"
                                 " latency p50/p95/max 10/30/30 ms")
    assert timeline(samples, origin=10.0) == "0-5s: 2 ok max 0.0s; 5-10s: 0 ok 1×429 max 0.0s"
    assert LoadResult.percentile([], 0.5) != LoadResult.percentile([], 0.5)  # NaN


@pytest.fixture
def payments_server() -> Iterator[tuple[int, list[str]]]:
    """A tiny keep-alive HTTP server: authorize answers 200 (every 4th 503), capture/refund 200."""
    seen: list[str] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            lines = head.decode().split("\r\n")
            length = next(int(line.split(":")[1]) for line in lines
                          if line.lower().startswith("content-length"))
            body = orjson.loads(await reader.readexactly(length))
            path = lines[0].split()[1]
            seen.append(path)
            status, answer = 200, {"paymentId": f"P{len(seen)}", "status": "REQUESTED"}
            if path.endswith("/authorize") and len(seen) % 4 == 0:
                status, answer = 503, {"code": "SERVICE_UNAVAILABLE"}
            elif "/capture/" in path or "/refund/" in path:
                answer = {"paymentId": path.rsplit("/", 1)[1], "merchantId": body["merchantId"],
                          "status": "COMPLETED" if "/capture/" in path else "REFUNDED"}
            payload = orjson.dumps(answer)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
            await writer.drain()
        writer.close()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()
        server.close()
        handlers = asyncio.all_tasks(loop)
        for task in handlers:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*handlers, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(5)
    yield port[0], seen
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_gateway_load_counts_statuses_and_keeps_a_ledger(payments_server: tuple[int, list[str]]) -> None:
    port, seen = payments_server
    load = GatewayLoad("127.0.0.1", port, max_connections=8, timeout=5, merchants=4, merchant_prefix="T")
    result = load.run("flows", [(1.0, 20)], 20, flow=True)
    assert result.planned == 20 and result.dropped == 0 and result.started in (19, 20)
    assert result.statuses["authorize 200"] + result.statuses["authorize 503"] == result.started
    assert result.statuses["authorize 503"] >= 1
    assert result.statuses["capture 200"] == result.statuses["refund 200"] == result.statuses["authorize 200"]
    assert result.completed == result.statuses["authorize 200"]
    assert result.failed_iterations == result.statuses["authorize 503"]
    assert result.errors() == result.statuses["authorize 503"]
    assert result.requests() == len(seen)
    assert set(result.latencies) == {"authorize", "capture", "refund"}
    assert 1 <= result.peak_connections <= 8
    assert result.client_cpu_seconds > 0
    assert len(load.ledger.payments) == result.completed
    assert {payment.status for payment in load.ledger.payments.values()} == {"REFUNDED"}


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_gateway_load_counts_a_refused_connection(unused_port: int) -> None:
    result = GatewayLoad("127.0.0.1", unused_port, timeout=1).run("refused", [(0.2, 20)], 20)
    assert result.planned == 4 and result.started in (3, 4)
    assert result.statuses == {"connect 599": result.started}
    assert result.failed_iterations == result.started and result.completed == 0
