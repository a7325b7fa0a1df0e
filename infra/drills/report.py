"""Step-by-step drill reports: every step is a hard assertion, printed as it happens.

A drill is a sequence of checks; the first failing check stops it (``DrillFailed``)
because later steps would only report consequences of the first failure. Cleanup
(restarting what the drill stopped) still runs, and its own steps are reported too.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

PASS, FAIL, INFO = "PASS", "FAIL", "INFO"


class DrillFailed(AssertionError):
    """A step's assertion failed; the message is the step's observed value."""


@dataclass
class Step:
    number: int
    name: str
    check: str
    observed: str
    verdict: str
    elapsed: float


@dataclass
class Report:
    """The steps of one drill run, printed live to ``out`` and summarised at the end."""

    drill: str
    out: TextIO = field(default_factory=lambda: sys.stdout)
    steps: list[Step] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.out.write(f"== drill {self.drill}\n")
        self.out.write(f"{'#':>3}  {'ELAPSED':>8}  {'VERDICT':<7}  STEP / CHECK / OBSERVED\n")
        self.out.flush()

    def _add(self, name: str, check: str, observed: str, verdict: str) -> Step:
        step = Step(len(self.steps) + 1, name, check, observed, verdict, time.monotonic() - self.started)
        self.steps.append(step)
        self.out.write(f"{step.number:>3}  {step.elapsed:>7.1f}s  {verdict:<7}  {name}\n"
                       f"{'':>23}check:    {check}\n{'':>23}observed: {observed}\n")
        self.out.flush()
        return step

    def check(self, name: str, check: str, ok: bool, observed: object) -> None:
        """Record a step; raises ``DrillFailed`` when ``ok`` is false."""
        self._add(name, check, str(observed), PASS if ok else FAIL)
        if not ok:
            raise DrillFailed(f"{name}: {observed}")

    def soft_fail(self, name: str, check: str, observed: object) -> None:
        """A failed step that must not stop the rest (cleanup): the drill still fails."""
        self._add(name, check, str(observed), FAIL)

    def info(self, name: str, observed: object) -> None:
        """A measured value that is reported but not asserted (latencies, counts)."""
        self._add(name, "(reported, not asserted)", str(observed), INFO)

    def progress(self, text: str) -> None:
        """A line printed while a long wait goes on (neither a step nor asserted), so that a
        minute of outage or drain shows what is happening instead of looking hung."""
        self.out.write(f"{'':>5}{time.monotonic() - self.started:>7.1f}s  ...      {text}\n")
        self.out.flush()

    @property
    def passed(self) -> bool:
        return bool(self.steps) and all(step.verdict != FAIL for step in self.steps)

    def summary(self) -> str:
        failed = [step for step in self.steps if step.verdict == FAIL]
        checks = sum(1 for step in self.steps if step.verdict != INFO)
        verdict = "PASSED" if self.passed else "FAILED"
        line = (f"== drill {self.drill} {verdict}: {checks - len(failed)}/{checks} checks passed"
                f" in {time.monotonic() - self.started:.1f} s")
        if failed:
            line += f"; first failure: step {failed[0].number} {failed[0].name}"
        return line
