"""payfn_shared.platform.backoff: the exponential growth, its cap and the jitter range."""

from __future__ import annotations

import random

import pytest
from payfn_shared.platform.backoff import Backoff


class _Extremes(random.Random):
    """Draws the low end of the range, then the high end, alternately."""

    def __init__(self) -> None:
        super().__init__()
        self.high = False

    def uniform(self, a: float, b: float) -> float:
        self.high = not self.high
        return a if self.high else b


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, jitter=(1.0, 1.0))
    assert [round(backoff.delay(n), 6) for n in (1, 2, 3, 4, 5, 80, 10_000)] == [
        0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert backoff.delay(0) == backoff.delay(1) == 0.1


def test_jitter_scales_the_capped_delay_within_its_range() -> None:
    rng = _Extremes()
    backoff = Backoff(initial=0.4, maximum=4.0, jitter=(0.0, 1.0))
    assert [backoff.delay(n, rng) for n in (1, 1, 6, 6)] == [0.0, 0.4, 0.0, 4.0]
    seeded = random.Random(7)
    spread = Backoff(initial=1.0, maximum=1.0)
    assert all(0.8 <= spread.delay(3, seeded) <= 1.2 for _ in range(200))


def test_a_custom_factor() -> None:
    backoff = Backoff(initial=0.01, maximum=1.0, jitter=(1.0, 1.0), factor=3.0)
    assert [round(backoff.delay(n), 6) for n in (1, 2, 3)] == [0.01, 0.03, 0.09]


@pytest.mark.parametrize("kwargs", [
    {"initial": 0.0, "maximum": 1.0},
    {"initial": 2.0, "maximum": 1.0},
    {"initial": 0.1, "maximum": 1.0, "jitter": (1.2, 0.8)},
    {"initial": 0.1, "maximum": 1.0, "jitter": (-0.1, 1.0)},
    {"initial": 0.1, "maximum": 1.0, "factor": 0.5},
])
def test_invalid_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid backoff"):
        Backoff(**kwargs)  # type: ignore[arg-type]
