"""Shared fixtures: the live local stack for integration and end-to-end tests.

The ``stack`` fixture brings the stack up through the same supervisor as
``payfn up`` (reusing whatever is already running, e.g. after ``make up``) and,
at the end of the session, stops only what it started itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, fields

import pymysql
import pytest
import redis
from payfn_shared.platform.config import PREFIX, Settings

from infra.stack.components import INFRASTRUCTURE
from infra.stack.supervisor import STARTED, ComponentStatus, Supervisor


@dataclass
class RunningStack:
    supervisor: Supervisor
    statuses: list[ComponentStatus]

    @property
    def settings(self) -> Settings:
        return self.supervisor.settings


def export_settings(settings: Settings) -> None:
    """Make ``load_settings()`` in code under test see the live stack's addresses."""
    for f in fields(settings):
        os.environ[PREFIX + f.name.upper()] = str(getattr(settings, f.name))


def _run_stack(supervisor: Supervisor) -> Iterator[RunningStack]:
    statuses = supervisor.up()
    export_settings(supervisor.settings)
    yield RunningStack(supervisor, statuses)
    started = [status.name for status in statuses if status.state == STARTED]
    if started and os.environ.get("PAYFN_KEEP_STACK") != "1":
        supervisor.down(started)


@pytest.fixture(scope="session")
def stack() -> Iterator[RunningStack]:
    """The infrastructure (MariaDB, Redis, Kafka, moto, Prometheus): integration tests."""
    yield from _run_stack(Supervisor(components=INFRASTRUCTURE))


@pytest.fixture(scope="session")
def platform(stack: RunningStack) -> Iterator[RunningStack]:
    """The whole stack as ``payfn up`` runs it (registry, function hosts, gateway): e2e tests."""
    yield from _run_stack(Supervisor())


@pytest.fixture(scope="session")
def settings(stack: RunningStack) -> Settings:
    return stack.settings


@pytest.fixture
def db(settings: Settings) -> Iterator[pymysql.connections.Connection]:
    connection = pymysql.connect(
        host=settings.db_host, port=settings.db_port, user=settings.db_user, password=settings.db_password,
        database=settings.db_name, autocommit=True, connect_timeout=5,
    )
    yield connection
    connection.close()


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    yield client
    client.close()
