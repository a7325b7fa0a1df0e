"""Starting a real function host process for the runtime integration tests.

Each host runs ``python -m infra.runtime.host`` on an ephemeral port (read back from
its ``--port-file``), with its stdout in a file so tests can read the platform's
START/END/REPORT lines, and is stopped with SIGTERM as a supervisor would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from infra.sam.template import REPO_ROOT
from tests.integration.registry_support import wait_until
from tests.invoke_auth import with_invoke_token

FIXTURE_TEMPLATE = REPO_ROOT / "tests" / "fixtures" / "template.yaml"


@dataclass
class HostProcess:
    process: subprocess.Popen[bytes]
    address: str
    stdout_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def lambda_client(self) -> Any:
        """boto3's Lambda client against this host, retries off so throttles surface."""
        return with_invoke_token(boto3.client(
            "lambda", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(retries={"max_attempts": 0, "mode": "standard"}, read_timeout=30),
        ))

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    def get_text(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return response.read().decode()

    def log(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def log_lines_for(self, request_id: str) -> list[str]:
        return [line for line in self.log().splitlines() if request_id in line]


@contextmanager
def running_host(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[HostProcess]:
    """A host process started with ``args`` (plus ``--port 0 --port-file``); SIGTERM on exit."""
    port_file = tmp_path / "host.port"
    stdout_path = tmp_path / "host.stdout"
    environment = {**os.environ, "PAYFN_RUNTIME_QUEUE_WAIT_MS": "0",
                   "PAYFN_RUNTIME_CODE_CHECK_SECONDS": "0.2", **(env or {})}
    with stdout_path.open("wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra.runtime.host", "--port", "0", "--port-file", str(port_file), *args],
            cwd=REPO_ROOT, env=environment, stdout=stdout, stderr=stdout,
        )
    try:
        def ready() -> str | None:
            if process.poll() is not None:
                pytest.fail(f"host exited with {process.returncode}: {stdout_path.read_text()}")
            return port_file.read_text().strip() if port_file.exists() else None

        address = wait_until(ready, timeout=20, interval=0.05)
        yield HostProcess(process, address, stdout_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
