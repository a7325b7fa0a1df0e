"""A 20-second open-model load through the gateway, with the invariants afterwards.

Modest on purpose (5 authorize → capture → refund flows per second, 15 requests/s):
it proves the whole path holds under concurrent traffic — no request failed, every
acknowledged payment is in the database with one outbox event per transition, the
outbox drained, the consumers applied each event exactly once, the projection and the
reconciliation agree. Latency is printed, never asserted (a shared 2-core CI machine
makes any latency bound a flake); the numbers that matter live in ``make bench``.

The event flow (relay scheduler, Kafka poller) is started for the test when the stack
does not run it, and stopped afterwards.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from payfn_shared.platform.config import Settings

from infra.drills.client import GatewayClient
from infra.drills.consistency import check_consistency
from infra.drills.load import LoadResult
from infra.drills.load_http import GatewayLoad
from infra.drills.report import DrillFailed, Report
from infra.drills.target import DrillTarget

RATE = 5.0
SECONDS = 20.0
MAX_ERROR_RATE = 0.01


@pytest.fixture
def target() -> Iterator[DrillTarget]:
    target = DrillTarget()
    target.ensure_event_flow(60)
    yield target
    target.stop_helpers()


def _warm(settings: Settings, merchant: str, flows: int = 3, parallel: int = 4, timeout: float = 90) -> None:
    """Complete ``flows`` flows on each of ``parallel`` connections first, so that several
    warm execution environments exist per function and cold starts (seconds on a busy
    machine, while the host throttles after 100 ms of queueing) are not part of the load."""
    client = GatewayClient(settings.gateway_url, timeout=60)
    deadline = time.monotonic() + timeout

    def one() -> None:
        done = 0
        while done < flows and time.monotonic() < deadline:
            answer = client.authorize(merchant)
            if answer.ok and client.capture(merchant, answer.body["paymentId"]).ok \
                    and client.refund(merchant, answer.body["paymentId"]).ok:
                done += 1
            elif not answer.ok:
                time.sleep(0.5)
        client.close()

    threads = [threading.Thread(target=one) for _ in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_load_smoke_flows_keep_every_invariant(settings: Settings, target: DrillTarget) -> None:
    prefix = f"SMK{uuid.uuid4().hex[:8]}"
    _warm(settings, f"{prefix}WARM")
    load = GatewayLoad(settings.gateway_host, settings.gateway_port, timeout=30, merchants=16,
                    merchant_prefix=prefix)
    result = load.run("smoke", [(SECONDS, RATE)], RATE, flow=True)
    latency = {op: "/".join(f"{LoadResult.percentile(s, q) * 1000:.0f}" for q in (0.5, 0.95, 0.99)) + " ms"
               for op, s in result.latencies.items()}
    print(f"load smoke: {result.completed} flows in {result.seconds:.1f} s, statuses {dict(result.statuses)},"
          f" dropped {result.dropped}, latency p50/p95/p99 {latency},"
          f" generator CPU {result.client_cpu_seconds:.2f} s")
    assert result.dropped == 0
    assert result.requests() >= 0.9 * RATE * SECONDS
    assert result.errors() <= MAX_ERROR_RATE * result.requests(), dict(result.statuses)

    report = Report("load smoke invariants", out=io.StringIO())
    client = GatewayClient(settings.gateway_url, load.ledger, timeout=60)
    try:
        check_consistency(report, settings, client, drain_timeout=90, read_kafka=False)
    except DrillFailed as failure:
        pytest.fail(f"{failure}\n{report.out.getvalue()}")
    finally:
        client.close()
    print(report.out.getvalue())
    assert report.passed
