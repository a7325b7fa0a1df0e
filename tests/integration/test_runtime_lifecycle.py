"""Function host lifecycle: code reload without restart, registry registration, clean stop."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.integration.registry_support import aws_endpoint, registry_client, running_registry, wait_until
from tests.integration.runtime_support import FIXTURE_TEMPLATE, HostProcess, running_host

HOT_TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Resources:
  HotFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: code/
      Handler: app.handler
      Runtime: python3.11
      Timeout: 3
      Tags:
        payfn:service: HOT-SERVICE
"""

HOT_CODE = """\
import os


def handler(event, context):
    return {{"version": {version}, "pid": os.getpid()}}
"""


@pytest.fixture(scope="module")
def endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from aws_endpoint(request)


def invoke(client: Any, name: str) -> tuple[dict[str, Any], Any]:
    response = client.invoke(FunctionName=name, Payload=b"{}")
    return response, json.loads(response["Payload"].read())


def report_lines(host: HostProcess, response: dict[str, Any]) -> list[str]:
    """The invocation's REPORT line, waited for: the host logs it after answering."""
    request_id = response["ResponseMetadata"]["RequestId"]
    return wait_until(lambda: [line for line in host.log_lines_for(request_id) if line.startswith("REPORT")])


def test_code_change_is_picked_up_without_restart(tmp_path: Path) -> None:
    (tmp_path / "template.yaml").write_text(HOT_TEMPLATE)
    (tmp_path / "code").mkdir()
    app = tmp_path / "code" / "app.py"
    app.write_text(HOT_CODE.format(version=1))
    args = ("--service", "HOT-SERVICE", "--template", str(tmp_path / "template.yaml"), "--no-register")
    with running_host(tmp_path, *args) as host:
        client = host.lambda_client()
        _, first = invoke(client, "HotFunction")
        _, warm = invoke(client, "HotFunction")
        assert first == warm == {"version": 1, "pid": first["pid"]}
        app.write_text(HOT_CODE.format(version=2))
        response, changed = wait_until(lambda: (r := invoke(client, "HotFunction"))[1]["version"] == 2 and r)
        assert changed["pid"] != first["pid"]
        report = report_lines(host, response)
        assert "Init Duration" in report[0]
        assert host.process.poll() is None


def test_registers_renews_and_cancels(tmp_path: Path, endpoint: str) -> None:
    with running_registry(endpoint) as registry:
        client = registry_client(registry.url)
        args = ("--service", "TEST-SERVICE", "--template", str(FIXTURE_TEMPLATE),
                "--registry-url", registry.url)
        with running_host(tmp_path, *args, env={"PAYFN_REGISTRY_RENEW_SECONDS": "0.3"}) as host:
            port = int(host.address.rsplit(":", 1)[1])
            (instance,) = wait_until(lambda: client.instances("TEST-SERVICE"))
            assert instance.instance_id == f"{socket.gethostname()}:TEST-SERVICE:{port}"
            assert (instance.host, instance.port, instance.status) == ("127.0.0.1", port, "UP")
            assert instance.metadata["metricsPath"] == "/metrics"
            assert instance.metadata["invokePath"] == "/2015-03-31/functions"
            assert "NoopFunction" in instance.metadata["functions"].split(",")
            # The registry forgets the instance (a restart, an expired lease): the next renewal re-registers.
            client.cancel("TEST-SERVICE", instance.instance_id)
            wait_until(lambda: client.instances("TEST-SERVICE"))
            host.process.send_signal(signal.SIGTERM)
            assert host.process.wait(timeout=15) == 0
            assert client.instances("TEST-SERVICE") == []


def test_host_serves_when_the_registry_is_down(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    args = ("--service", "TEST-SERVICE", "--template", str(FIXTURE_TEMPLATE), "--registry-url", dead)
    with running_host(tmp_path, *args) as host:
        assert invoke(host.lambda_client(), "NoopFunction")[1] == {"ok": True}
        wait_until(lambda: "registry unavailable" in host.log())


def test_a_short_queue_wait_hands_the_busy_environment_over(tmp_path: Path) -> None:
    args = ("--service", "TEST-SERVICE", "--template", str(FIXTURE_TEMPLATE), "--no-register")
    with running_host(tmp_path, *args, env={"PAYFN_RUNTIME_QUEUE_WAIT_MS": "10000"}) as host:
        client = host.lambda_client()
        first: list[Any] = []
        slow = threading.Thread(target=lambda: first.append(
            client.invoke(FunctionName="ThrottledFunction", Payload=b'{"seconds": 1}')))
        slow.start()
        wait_until(lambda: host.get_json("/health")["functions"]["ThrottledFunction"]["busy"] == 1,
                   interval=0.02)
        _, queued = invoke(client, "ThrottledFunction")
        slow.join()
        assert json.loads(first[0]["Payload"].read())["pid"] == queued["pid"]


def test_prewarmed_environments_serve_the_first_request_warm(tmp_path: Path) -> None:
    args = ("--functions", "NoopFunction,MissingHandlerFunction", "--template", str(FIXTURE_TEMPLATE))
    with running_host(tmp_path, *args, env={"PAYFN_RUNTIME_PREWARM": "2"}) as host:
        wait_until(lambda: host.get_json("/health")["functions"]["NoopFunction"]["environments"] == 2)
        response, body = invoke(host.lambda_client(), "NoopFunction")
        assert body == {"ok": True}
        report = report_lines(host, response)
        assert "Init Duration" not in report[0]
        # Both functions prewarm concurrently: the failing one may log after Noop is ready.
        wait_until(lambda: "MissingHandlerFunction: prewarm stopped" in host.log())
        assert host.get_json("/health")["functions"]["MissingHandlerFunction"]["environments"] == 0


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_environments_die_with_a_killed_host(tmp_path: Path) -> None:
    args = ("--functions", "LongSleepFunction", "--template", str(FIXTURE_TEMPLATE))
    with running_host(tmp_path, *args) as host:
        client = host.lambda_client()
        invoke(client, "LongSleepFunction")
        pid = host.process.pid
        (worker,) = (int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())

        def sleep_long() -> None:
            with contextlib.suppress(BotoCoreError, ClientError):
                client.invoke(FunctionName="LongSleepFunction", Payload=b'{"seconds": 120}')

        busy = threading.Thread(target=sleep_long, daemon=True)
        busy.start()
        wait_until(lambda: host.get_json("/health")["functions"]["LongSleepFunction"]["busy"] == 1)
        host.process.kill()
        host.process.wait()
        # The handler would sleep for two minutes: the environment must go with its host.
        wait_until(lambda: _dead(worker), timeout=20)


def test_idle_environments_are_reaped(tmp_path: Path) -> None:
    args = ("--functions", "NoopFunction", "--template", str(FIXTURE_TEMPLATE))
    with running_host(tmp_path, *args, env={"PAYFN_RUNTIME_IDLE_SECONDS": "0.5"}) as host:
        invoke(host.lambda_client(), "NoopFunction")
        wait_until(lambda: host.get_json("/health")["functions"]["NoopFunction"]["environments"] == 0)
        response, body = invoke(host.lambda_client(), "NoopFunction")
        assert body == {"ok": True}
        report = report_lines(host, response)
        assert "Init Duration" in report[0]
