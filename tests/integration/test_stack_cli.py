"""``payfn up/status/down`` as a user runs them, on private stacks beside the shared one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.sam.template import REPO_ROOT
from infra.stack.process import free_port, pid_alive

PAYFN = [sys.executable, "-m", "infra.cli"]


def run_payfn(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(PAYFN + args, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO_ROOT, check=False)


def private_env(tmp_path: Path, **ports: int) -> dict[str, str]:
    """An environment for a stack of its own: own folder, own credentials, free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFN_")}
    env.update({
        "PAYFN_STACK_DIR": str(tmp_path / "stack"),
        "PAYFN_ENV_FILE": str(tmp_path / "none.env"),
        "PAYFN_DB_PORT": str(ports.get("db", free_port())),
        "PAYFN_REDIS_PORT": str(ports.get("redis", free_port())),
        "PAYFN_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports.get('kafka', free_port())}",
        "PAYFN_AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports.get('moto', free_port())}",
        "PAYFN_PROMETHEUS_PORT": str(ports.get("prometheus", free_port())),
        "PAYFN_REGISTRY_PORT": str(free_port()),
        "PAYFN_GATEWAY_PORT": str(free_port()),
    })
    return env


@pytest.fixture
def squatter() -> Iterator[int]:
    """A TCP port held by a program that speaks no protocol of ours."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.sendall(b"HELLO FROM SOMETHING ELSE\r\n")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_second_up_on_live_stack_changes_nothing(stack: object) -> None:
    result = run_payfn(["up"], dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert " started " not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_taken_port_names_port_and_variable_and_leaves_nothing_started(tmp_path: Path, squatter: int) -> None:
    env = private_env(tmp_path, redis=squatter)
    result = run_payfn(["up"], env)
    assert result.returncode == 1
    assert f"port {squatter}" in result.stderr
    assert "PAYFN_REDIS_PORT" in result.stderr
    assert "Traceback" not in result.stderr
    # MariaDB was started before Redis failed: it must have been stopped again.
    run_dir = tmp_path / "stack" / "run"
    assert not list(run_dir.glob("*.pid"))
    assert table_rows(run_payfn(["status"], env).stdout)["mariadb"][1] == "stopped"


def table_rows(output: str) -> dict[str, list[str]]:
    """``payfn up/status`` table → {component: [address, state, pid]}."""
    rows = {}
    for line in output.splitlines()[1:]:
        if not line.strip():
            break
        name, *rest = line.split()
        rows[name] = rest
    return rows


def test_private_stack_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    """The whole stack (infrastructure, registry, hosts, event sources, gateway) on its own ports."""
    env = private_env(tmp_path)
    up = run_payfn(["up"], env, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    rows = table_rows(up.stdout)
    assert {"mariadb", "redis", "kafka", "moto", "prometheus", "registry", "gateway",
            "ingest-service-1", "scheduler", "eventsource"} <= set(rows)
    pids = [int(row[-1]) for row in rows.values()]
    assert all(row[1] == "started" for row in rows.values())
    assert all(pid_alive(pid) for pid in pids)

    status = run_payfn(["status"], env)
    assert status.returncode == 0, status.stdout
    assert all(row[1] == "running" for row in table_rows(status.stdout).values())

    again = run_payfn(["up"], env)
    assert again.returncode == 0
    assert all(row[1] == "running" for row in table_rows(again.stdout).values())

    down = run_payfn(["down"], env)
    assert down.returncode == 0
    assert not [pid for pid in pids if pid_alive(pid)]
    assert all(row[1] == "stopped" for row in table_rows(run_payfn(["status"], env).stdout).values())
