"""payfn_shared.platform.db with pymysql.connect replaced by a scripted fake: retries and error mapping."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
import pytest
from payfn_shared.platform import db as db_module
from payfn_shared.platform.config import Settings
from payfn_shared.platform.db import ConnectionLost, Database, DbConfig, TransientConflict
from payfn_shared.platform.errors import DependencyUnavailable

DEADLOCK = pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
LOST = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")
DUPLICATE = pymysql.err.IntegrityError(1062, "Duplicate entry")


class FakeConnection:
    """Counts what the data layer does; ``fail_commit`` makes COMMIT lose the connection."""

    def __init__(self, log: list[str], fail_commit: bool = False) -> None:
        self.log = log
        self.fail_commit = fail_commit

    def begin(self) -> None:
        self.log.append("begin")

    def commit(self) -> None:
        if self.fail_commit:
            raise LOST
        self.log.append("commit")

    def rollback(self) -> None:
        self.log.append("rollback")

    def ping(self, reconnect: bool) -> None:
        self.log.append("ping")

    def close(self) -> None:
        self.log.append("close")

    @contextmanager
    def cursor(self) -> Iterator[FakeConnection]:
        yield self

    def execute(self, sql: str, params: Any = None) -> int:
        self.log.append(sql)
        return 1

    def fetchall(self) -> list[dict[str, Any]]:
        return [{"x": 1}]


@pytest.fixture
def log() -> list[str]:
    return []


def _database(monkeypatch: pytest.MonkeyPatch, log: list[str], **conn_kwargs: Any) -> Database:
    def connect(**kwargs: Any) -> FakeConnection:
        log.append("connect")
        return FakeConnection(log, **conn_kwargs)

    monkeypatch.setattr(db_module.pymysql, "connect", connect)
    monkeypatch.setattr(db_module.time, "sleep", lambda seconds: None)
    return Database(Settings(), DbConfig(db_retry_attempts=3, db_ping_after_idle=3600))


def _failing(errors: list[BaseException]) -> Callable[[Any], str]:
    def work(cursor: Any) -> str:
        if errors:
            raise errors.pop(0)
        return "done"

    return work


def test_deadlocks_are_retried_then_succeed(monkeypatch: pytest.MonkeyPatch, log: list[str]) -> None:
    database = _database(monkeypatch, log)
    assert database.run_in_transaction(_failing([DEADLOCK, DEADLOCK])) == "done"
    assert log.count("rollback") == 2 and log.count("commit") == 1 and log.count("connect") == 1


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch, log: list[str]) -> None:
    database = _database(monkeypatch, log)
    with pytest.raises(TransientConflict) as caught:
        database.run_in_transaction(_failing([DEADLOCK] * 5))
    assert isinstance(caught.value, DependencyUnavailable) and caught.value.status == 503
    assert log.count("begin") == 3


def test_lost_connection_before_commit_reconnects_once(
    monkeypatch: pytest.MonkeyPatch, log: list[str]
) -> None:
    database = _database(monkeypatch, log)
    assert database.run_in_transaction(_failing([LOST])) == "done"
    assert log.count("connect") == 2
    with pytest.raises(ConnectionLost):
        database.run_in_transaction(_failing([LOST, LOST]))


def test_lost_connection_at_commit_is_not_retried(monkeypatch: pytest.MonkeyPatch, log: list[str]) -> None:
    database = _database(monkeypatch, log, fail_commit=True)
    with pytest.raises(ConnectionLost) as caught:
        database.run_in_transaction(_failing([]))
    assert caught.value.before_commit is False and log.count("begin") == 1


def test_integrity_errors_pass_through_after_rollback(
    monkeypatch: pytest.MonkeyPatch, log: list[str]
) -> None:
    database = _database(monkeypatch, log)
    with pytest.raises(pymysql.err.IntegrityError):
        database.run_in_transaction(_failing([DUPLICATE]))
    assert log[-1] == "rollback" and log.count("connect") == 1


def test_connect_failure_is_dependency_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(**kwargs: Any) -> None:
        raise pymysql.err.OperationalError(2003, "Can't connect to MySQL server")

    monkeypatch.setattr(db_module.pymysql, "connect", refuse)
    with pytest.raises(DependencyUnavailable):
        Database(Settings()).run_in_transaction(_failing([]))


def test_autocommit_writes_are_not_retried_but_reads_are(
    monkeypatch: pytest.MonkeyPatch, log: list[str]
) -> None:
    database = _database(monkeypatch, log)
    calls: list[str] = []

    def lose_first(self: FakeConnection, sql: str, params: Any = None) -> int:
        calls.append(sql)
        if len(calls) == 1:
            raise LOST
        return 1

    monkeypatch.setattr(FakeConnection, "execute", lose_first)
    with pytest.raises(ConnectionLost):
        database.execute("UPDATE t SET a = 1", ())
    calls.clear()
    assert database.query("SELECT 1", ()) == [{"x": 1}]
    assert len(calls) == 2
