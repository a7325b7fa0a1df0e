"""The breaker drill in CI: the seed's circuit-breaker scenario, on a PRIVATE stack.

The drill stops the Kafka broker, so it must not run against the session's stack
(other end-to-end tests use it at the same time): ``payfn drill breaker --private
--fast`` starts a whole stack of its own on free ports with short breaker
durations (wait in OPEN 3 s), runs the drill and stops that stack again. It runs as
a subprocess so its environment (ports, stack folder) never leaks into this
session's.
"""

from __future__ import annotations

import os
import subprocess
import sys

from infra.sam.template import REPO_ROOT


def test_breaker_drill_passes_on_a_private_stack() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFN_")}
    result = subprocess.run([sys.executable, "-m", "infra.cli", "drill", "breaker", "--private", "--fast"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420, check=False)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "== drill breaker PASSED" in result.stdout
    for step in ("breaker opened", "recovery", "final state", "outbox drained", "database = 2xx answers",
                 "consumers applied every event once", "balance projection = payments"):
        assert f"PASS     {step}" in result.stdout, step
