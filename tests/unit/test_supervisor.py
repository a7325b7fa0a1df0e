"""The supervisor's failure handling, with real (trivial) processes and no services."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from payfn_shared.platform.config import Settings

from infra.sam.template import load_template
from infra.stack.component import Component, StackError
from infra.stack.process import free_port, port_open
from infra.stack.supervisor import Supervisor


class CrashingComponent(Component):
    """Prints to its log and exits with code 3 before ever answering."""

    name = "crasher"
    title = "Crasher"
    port_variable = "PAYFN_CRASHER_PORT"
    start_timeout = 10.0

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.settings.gateway_port

    def command(self) -> list[str]:
        return ["sh", "-c", "echo 'fatal: cannot open the frobnicator'; exit 3"]

    def healthy(self) -> bool:
        return port_open(self.host, self.port)


def test_component_that_exits_reports_code_and_log(tmp_path: Path) -> None:
    settings = replace(Settings(), stack_dir=str(tmp_path), gateway_port=free_port(),
                       db_password="x", db_readonly_password="y")
    supervisor = Supervisor(settings, load_template(), components=[CrashingComponent])
    with pytest.raises(StackError) as failure:
        supervisor.up()
    message = str(failure.value)
    assert "exited with code 3" in message
    assert "fatal: cannot open the frobnicator" in message
    assert not list((tmp_path / "run").glob("*.pid"))


def test_credentials_generated_once_and_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAYFN_CREDENTIALS_FILE", raising=False)
    settings = replace(Settings(), stack_dir=str(tmp_path))
    first = Supervisor(settings, load_template(), components=[]).settings
    second = Supervisor(settings, load_template(), components=[]).settings
    assert first.db_password and first.db_password == second.db_password
    assert first.db_readonly_password != first.db_password
    assert (tmp_path / "credentials.env").stat().st_mode & 0o077 == 0


def test_empty_text_setting_is_kept_empty_numbers_fall_back(tmp_path: Path) -> None:
    """Regression: a deployed function's ``PAYFN_AWS_ENDPOINT_URL=""`` fell back to the
    local emulator's address instead of meaning "AWS itself"."""
    from payfn_shared.platform.config import load_settings

    env = {"PAYFN_ENV_FILE": str(tmp_path / "none"), "PAYFN_CREDENTIALS_FILE": str(tmp_path / "none"),
           "PAYFN_AWS_ENDPOINT_URL": "", "PAYFN_DB_PORT": ""}
    settings = load_settings(env)
    assert settings.aws_endpoint_url == ""
    assert settings.db_port == 3306


@pytest.mark.parametrize(("raw", "expected"), [(None, 21_600_000), ("60000", 60_000), ("-1", -1)])
def test_kafka_topic_retention_accepts_a_minute_or_more_or_forever(
    tmp_path: Path, raw: str | None, expected: int,
) -> None:
    from payfn_shared.platform.config import load_settings

    env = {"PAYFN_ENV_FILE": str(tmp_path / "none"), "PAYFN_CREDENTIALS_FILE": str(tmp_path / "none")}
    if raw is not None:
        env["PAYFN_KAFKA_TOPIC_RETENTION_MS"] = raw
    assert load_settings(env).kafka_topic_retention_ms == expected


@pytest.mark.parametrize("raw", ["59999", "21600", "0", "-2"])
def test_kafka_topic_retention_rejects_less_than_a_minute(tmp_path: Path, raw: str) -> None:
    """21600 is 6 h written in seconds: taken as milliseconds it would delete events at once."""
    from payfn_shared.platform.config import ConfigError, load_settings

    env = {"PAYFN_ENV_FILE": str(tmp_path / "none"), "PAYFN_CREDENTIALS_FILE": str(tmp_path / "none"),
           "PAYFN_KAFKA_TOPIC_RETENTION_MS": raw}
    with pytest.raises(ConfigError, match="PAYFN_KAFKA_TOPIC_RETENTION_MS"):
        load_settings(env)


class SleepingBackgroundComponent(CrashingComponent):
    """Starts a child that outlives nothing: both just sleep until stopped."""

    name = "sleeper"
    background = True

    def command(self) -> list[str]:
        return ["sh", "-c", "sleep 30 & wait"]

    def healthy(self) -> bool:
        return True


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_background_component_and_what_it_starts_run_nicer(tmp_path: Path) -> None:
    settings = replace(Settings(), stack_dir=str(tmp_path), gateway_port=free_port(),
                       db_password="x", db_readonly_password="y", background_nice=7)
    supervisor = Supervisor(settings, load_template(), components=[SleepingBackgroundComponent])
    own = _niceness(os.getpid())
    try:
        [status] = supervisor.up()
        assert status.pid is not None
        assert _niceness(status.pid) == min(19, own + 7)
        deadline = time.monotonic() + 5
        children: list[str] = []
        while not children and time.monotonic() < deadline:
            time.sleep(0.01)
            children = Path(f"/proc/{status.pid}/task/{status.pid}/children").read_text().split()
        assert children, "the component's child never started"
        assert _niceness(int(children[0])) == min(19, own + 7)
    finally:
        supervisor.down()


def test_only_services_without_api_routes_are_background(tmp_path: Path) -> None:
    from infra.stack.component import StackPaths
    from infra.stack.services import (
        EventSourcePollerService,
        FunctionHostService,
        GatewayService,
        SchedulerService,
    )

    settings = replace(Settings(), stack_dir=str(tmp_path))
    paths, template = StackPaths(tmp_path), load_template()
    assert FunctionHostService(settings, paths, template, service="CONSUMER-WORKER", index=1).niceness == 10
    assert FunctionHostService(settings, paths, template, service="INGEST-SERVICE", index=1).niceness == 0
    assert FunctionHostService(settings, paths, template, service="MONITORING-SERVICE", index=1).niceness == 0
    assert SchedulerService(settings, paths, template).niceness == 10
    assert EventSourcePollerService(settings, paths, template).niceness == 10
    assert GatewayService(settings, paths, template).niceness == 0
    assert SchedulerService(replace(settings, background_nice=0), paths, template).niceness == 0


@pytest.mark.parametrize("raw", ["-1", "20"])
def test_background_nice_outside_what_linux_accepts_is_refused(tmp_path: Path, raw: str) -> None:
    from payfn_shared.platform.config import ConfigError, load_settings

    env = {"PAYFN_ENV_FILE": str(tmp_path / "none"), "PAYFN_CREDENTIALS_FILE": str(tmp_path / "none"),
           "PAYFN_BACKGROUND_NICE": raw}
    with pytest.raises(ConfigError, match="PAYFN_BACKGROUND_NICE"):
        load_settings(env)
