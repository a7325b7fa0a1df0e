"""Read-only database access for monitoring: three independent locks on the same door.

A monitoring query must never change payment data, even if a bug (or a crafted
filter) produced a write. So every query here runs
1. as the SELECT-only user (``settings.db_readonly_user``; the stack grants it
   nothing else, and on AWS the same user is created with the same grant), so
   the server refuses any write with error 1142;
2. in a session set ``TRANSACTION READ ONLY`` and inside ``START TRANSACTION
   READ ONLY``, so even a user with more grants could not write here;
3. with ``max_statement_time`` (MariaDB) so that a heavy report is cut off by
   the server instead of holding a connection and I/O while payments are served.
Row limits are the callers' job (every query has a LIMIT or aggregates).

The connection handling (warm per-thread reuse, ping after idling, "database
gone" → 503) is :class:`payfn_shared.platform.db.Database`'s, pointed at the read-only user.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymysql

from payfn_shared.monitoring.config import MonitoringConfig, load_monitoring_config
from payfn_shared.platform.config import Settings, load_settings
from payfn_shared.platform.db import CONNECTION_ERRORS, Cursor, Database, error_number
from payfn_shared.platform.errors import DependencyUnavailable, ServiceUnavailable

#: MariaDB: "Query execution was interrupted (max_statement_time exceeded)".
STATEMENT_TIMEOUT = 1969
#: MySQL has no max_statement_time (1193 unknown variable): its per-session knob is max_execution_time.
UNKNOWN_VARIABLE = 1193


class QueryTimeout(ServiceUnavailable):
    """A monitoring query ran past its statement time limit (answered 503)."""

    code = "QUERY_TIMEOUT"
    default_message = "The monitoring query exceeded its time limit"


class ReadOnlyDatabase:
    """Snapshots (read-only transactions) on the SELECT-only user's connection."""

    def __init__(self, settings: Settings, config: MonitoringConfig | None = None) -> None:
        self.config = config or load_monitoring_config()
        reader = dataclasses.replace(
            settings, db_user=settings.db_readonly_user, db_password=settings.db_readonly_password
        )
        self._database = Database(reader)

    def _limit_statement_time(self, cursor: Cursor) -> None:
        seconds = self.config.statement_timeout_seconds
        try:
            cursor.execute("SET SESSION max_statement_time = %s", (seconds,))
        except pymysql.err.OperationalError as exc:
            if error_number(exc) != UNKNOWN_VARIABLE:
                raise
            cursor.execute("SET SESSION max_execution_time = %s", (int(seconds * 1000),))

    @contextmanager
    def snapshot(self) -> Iterator[Cursor]:
        """A cursor inside ``START TRANSACTION READ ONLY``: one consistent view for a whole report."""
        conn = self._database.connection()
        try:
            with conn.cursor() as cursor:
                self._limit_statement_time(cursor)
                cursor.execute("SET SESSION TRANSACTION READ ONLY")
                cursor.execute("START TRANSACTION READ ONLY")
                yield cursor
            conn.commit()
        except pymysql.err.MySQLError as exc:
            number = error_number(exc)
            if number in CONNECTION_ERRORS or isinstance(exc, pymysql.err.InterfaceError):
                self._database.discard()
                raise DependencyUnavailable("Database is unavailable") from exc
            self._rollback(conn)
            if number == STATEMENT_TIMEOUT:
                raise QueryTimeout() from exc
            raise
        except OSError as exc:
            self._database.discard()
            raise DependencyUnavailable("Database is unavailable") from exc
        except BaseException:
            self._rollback(conn)
            raise

    def _rollback(self, conn: pymysql.connections.Connection) -> None:
        try:
            conn.rollback()
        except (pymysql.err.MySQLError, OSError):
            self._database.discard()

    def fetch_all(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """One query in its own snapshot (reports that need several use :meth:`snapshot`)."""
        with self.snapshot() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

    def close(self) -> None:
        self._database.close()


_lock = threading.Lock()
_readonly: ReadOnlyDatabase | None = None


def get_readonly_database() -> ReadOnlyDatabase:
    """The process-wide read-only database (created on first use, reused warm)."""
    global _readonly
    with _lock:
        if _readonly is None:
            _readonly = ReadOnlyDatabase(load_settings())
        return _readonly

