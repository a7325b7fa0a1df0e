"""How long the stack takes to come up: first start on an empty folder, then a second ``payfn up``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infra.sam.template import REPO_ROOT
from infra.stack.process import free_port


def _payfn(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "infra.cli", *args], env=env, cwd=REPO_ROOT,
                            capture_output=True, text=True, check=False, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"payfn {' '.join(args)} failed: {result.stderr}")
    return time.monotonic() - started


def run() -> dict[str, Any]:
    """Times a private stack (own folder and free ports) so the shared one is untouched."""
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFN_")}
        env.update({
            "PAYFN_STACK_DIR": str(Path(folder) / "stack"), "PAYFN_ENV_FILE": str(Path(folder) / "none"),
            "PAYFN_DB_PORT": str(free_port()), "PAYFN_REDIS_PORT": str(free_port()),
            "PAYFN_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "PAYFN_AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "PAYFN_PROMETHEUS_PORT": str(free_port()), "PAYFN_REGISTRY_PORT": str(free_port()),
            "PAYFN_GATEWAY_PORT": str(free_port()),
        })
        try:
            first = _payfn(["up"], env)
            second = _payfn(["up"], env)
        finally:
            down = _payfn(["down"], env)
    return {"first_up_seconds": round(first, 2), "second_up_seconds": round(second, 2),
            "down_seconds": round(down, 2), "goal": "first < 60 s, second < 5 s"}
