"""Pure pieces of the drills and the load generator: no services."""

from __future__ import annotations

import asyncio
import io
from collections import Counter

import pytest
from payfn_shared.platform.breaker import BreakerConfig

from infra.drills.breaker import surely_opens
from infra.drills.client import Answer, ClientLedger
from infra.drills.consistency import FlowState
from infra.drills.load_http import Connection
from infra.drills.report import DrillFailed, Report


def test_report_stops_at_the_first_failed_check_and_counts_only_checks() -> None:
    report = Report("unit", out=io.StringIO())
    report.check("one", "x", True, "fine")
    report.info("latency", "12 ms")
    with pytest.raises(DrillFailed, match="two: broken"):
        report.check("two", "y", False, "broken")
    assert not report.passed
    assert "1/2 checks passed" in report.summary()
    assert "first failure: step 3 two" in report.summary()


def test_ledger_keeps_what_clients_were_told_and_which_outcomes_are_unknown() -> None:
    ledger = ClientLedger()
    ledger.authorized("M", "k1", 10, "KRW", Answer(200, {"paymentId": "p1", "status": "REQUESTED"}, 0.01))
    ledger.authorized("M", "k2", 10, "KRW", Answer(502, {}, 0.01))
    assert ledger.ambiguous == {("M", "k2")}
    ledger.authorized("M", "k2", 10, "KRW", Answer(200, {"paymentId": "p2", "status": "REQUESTED"}, 0.01))
    assert not ledger.ambiguous
    ledger.transitioned("p1", Answer(200, {"status": "COMPLETED"}, 0.01))
    ledger.transitioned("p2", Answer(409, {"code": "CAPTURE_CONFLICT"}, 0.01))
    assert (ledger.payments["p1"].status, ledger.payments["p2"].status) == ("COMPLETED", "REQUESTED")


def _state(processed: Counter[tuple[str, str]], unpublished: int = 0) -> FlowState:
    rows = Counter({("REQUESTED", "PAYMENT_AUTHORIZED"): 2, ("REFUNDED", "PAYMENT_AUTHORIZED"): 1,
                    ("REFUNDED", "PAYMENT_CAPTURED"): 1, ("REFUNDED", "PAYMENT_REFUNDED"): 1})
    return FlowState(Counter({"REQUESTED": 2, "REFUNDED": 1}), rows, rows.copy(), unpublished, processed, [])


def test_flow_state_expects_one_event_per_transition_and_each_consumer_once() -> None:
    complete = Counter({("balance-projection", "PAYMENT_AUTHORIZED"): 3,
                        ("balance-projection", "PAYMENT_CAPTURED"): 1,
                        ("balance-projection", "PAYMENT_REFUNDED"): 1,
                        ("ledger-consumer", "PAYMENT_CAPTURED"): 1,
                        ("ledger-consumer", "PAYMENT_REFUNDED"): 1})
    state = _state(complete)
    assert state.expected_events() == state.events()
    assert state.settled
    behind = _state(complete - Counter({("ledger-consumer", "PAYMENT_REFUNDED"): 1}))
    assert behind.missing_processed() == {"ledger-consumer/PAYMENT_REFUNDED": 1}
    assert not _state(complete, unpublished=1).settled


def test_http_connection_reads_split_responses_in_order() -> None:
    async def scenario() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        connection = Connection()
        first = asyncio.ensure_future(_wait(connection))
        await asyncio.sleep(0)
        connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Len")
        connection.data_received(b'gth: 11\r\n\r\n{"a": true}')
        one = await first
        second = asyncio.ensure_future(_wait(connection))
        await asyncio.sleep(0)
        connection.data_received(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}")
        return one, await second

    one, two = asyncio.run(scenario())
    assert one == (200, b'{"a": true}')
    assert two == (503, b"{}")


async def _wait(connection: Connection) -> tuple[int, bytes]:
    connection.waiter = asyncio.get_running_loop().create_future()
    return await connection.waiter


@pytest.mark.parametrize(("buffered", "failed", "opens"), [
    (0, 0, True),      # a fresh breaker: the seed's 5 successes + 6 failures = 54.5 %
    (3, 0, False),     # 6 of 14 = 43 %
    (96, 0, False),    # the used stack: a window full of successes
    (100, 50, False),  # the old failures may be the ones pushed out: 39 + 6 of 100
    (100, 95, True),   # even in the worst case 84 of 100 failed
])
def test_the_breaker_drill_knows_whether_its_outage_can_open_the_window(buffered: int, failed: int,
                                                                        opens: bool) -> None:
    snapshot = {"numberOfBufferedCalls": buffered, "numberOfFailedCalls": failed}
    assert surely_opens(snapshot, BreakerConfig(), successes=5, failures=6) is opens
