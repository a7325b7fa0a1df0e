"""The load benchmark's scenario set-up (no stack)."""

from __future__ import annotations

from payfn_shared.payments.validation import MERCHANT_ID_RE

from tests.load.bench_load import SCENARIOS


def test_each_scenario_has_merchants_of_its_own() -> None:
    """Regression: authorize_20rps and authorize_1000rps both used merchants ``LAUTHOR…``,
    so the second scenario's check counted the first one's payments as unexplained rows."""
    prefixes = [scenario.merchant_prefix for scenario in SCENARIOS.values()]
    assert len(set(prefixes)) == len(prefixes)
    for prefix in prefixes:
        assert not any(other != prefix and other.startswith(prefix) for other in prefixes)
        assert MERCHANT_ID_RE.fullmatch(f"{prefix}0255"), prefix
