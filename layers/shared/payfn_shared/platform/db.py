"""MariaDB access for functions: warm connection reuse, transactions, bounded retries.

Why it looks like this:
- A Lambda execution environment serves one invocation at a time and is reused warm,
  so a connection opened once and kept at module level saves a TCP+auth round trip
  per invocation. It is kept per thread (``threading.local``) because the local
  platform, the tests and the benchmark call handlers from several threads, and a
  pymysql connection must never be shared between threads.
- A warm connection can be stale (server restarted, idle timeout): it is pinged
  when it has been idle for a while, and a connection lost *before* COMMIT was sent
  is retried once on a fresh connection (nothing was committed, so it is safe).
- InnoDB deadlocks (1213) and lock wait timeouts (1205) roll the transaction back;
  the whole unit of work is retried a bounded number of times.
- Every "the database is not there" failure becomes one exception,
  :class:`~payfn_shared.platform.errors.DependencyUnavailable`, which the edge answers 503.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import pymysql
import pymysql.cursors

from payfn_shared.platform.backoff import Backoff
from payfn_shared.platform.config import ConfigError, Settings, load_dataclass, load_settings
from payfn_shared.platform.errors import DependencyUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")
Cursor = pymysql.cursors.DictCursor

#: Client/server error numbers that mean "the connection or the server is gone".
CONNECTION_ERRORS = frozenset({1040, 1053, 1927, 2002, 2003, 2006, 2013, 2014, 2055})
#: Error numbers after which InnoDB rolled the transaction back and a retry can succeed.
RETRYABLE_ERRORS = frozenset({1205, 1213})
DUPLICATE_KEY = 1062
#: Between retries of a transaction InnoDB rolled back: 5-20 ms, then doubling up to 100 ms.
CONFLICT_BACKOFF = Backoff(initial=0.0125, maximum=0.1, jitter=(0.4, 1.6))


@dataclass(frozen=True)
class DbConfig:
    """Knobs of the data layer (env ``PAYFN_DB_*``); timeouts in seconds."""

    db_read_timeout: float = 5.0
    db_write_timeout: float = 5.0
    db_lock_wait_timeout: int = 5
    db_retry_attempts: int = 3
    db_ping_after_idle: float = 5.0

    def validate(self) -> None:
        if self.db_read_timeout <= 0 or self.db_write_timeout <= 0:
            raise ConfigError("PAYFN_DB_READ_TIMEOUT / PAYFN_DB_WRITE_TIMEOUT must be > 0")
        if self.db_lock_wait_timeout < 1:
            raise ConfigError("PAYFN_DB_LOCK_WAIT_TIMEOUT must be >= 1")
        if self.db_retry_attempts < 1:
            raise ConfigError("PAYFN_DB_RETRY_ATTEMPTS must be >= 1")


class TransientConflict(DependencyUnavailable):
    """Deadlock or lock wait timeout: InnoDB rolled back, the work may be retried."""


class ConnectionLost(DependencyUnavailable):
    """The connection failed; ``before_commit`` tells whether a retry is known to be safe."""

    def __init__(self, message: str, *, before_commit: bool) -> None:
        super().__init__(message)
        self.before_commit = before_commit


def error_number(exc: BaseException) -> int | None:
    """The MySQL error number of a pymysql exception, if it carries one."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def in_list(values: Sequence[V]) -> tuple[str, tuple[V, ...]]:
    """Placeholders for an ``IN (…)`` list and its parameters (values never become SQL text)."""
    return ", ".join(["%s"] * len(values)), tuple(values)


def is_duplicate_key(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.IntegrityError) and error_number(exc) == DUPLICATE_KEY


class _Slot:
    """One thread's connection and when it was last used."""

    def __init__(self) -> None:
        self.conn: pymysql.connections.Connection | None = None
        self.last_used = 0.0


class Database:
    """A per-thread, reconnecting pymysql connection pool of size one per thread."""

    def __init__(self, settings: Settings, config: DbConfig | None = None) -> None:
        self.settings = settings
        self.config = config or load_dataclass(DbConfig)
        self._local = threading.local()

    def _slot(self) -> _Slot:
        slot = getattr(self._local, "slot", None)
        if slot is None:
            slot = _Slot()
            self._local.slot = slot
        return slot

    def _connect(self) -> pymysql.connections.Connection:
        s, c = self.settings, self.config
        try:
            return pymysql.connect(
                host=s.db_host,
                port=s.db_port,
                user=s.db_user,
                password=s.db_password,
                database=s.db_name,
                charset="utf8mb4",
                autocommit=True,
                connect_timeout=s.db_connect_timeout,
                read_timeout=c.db_read_timeout,
                write_timeout=c.db_write_timeout,
                cursorclass=pymysql.cursors.DictCursor,
                init_command=(
                    f"SET time_zone = '+00:00', innodb_lock_wait_timeout = {int(c.db_lock_wait_timeout)}"
                ),
            )
        except pymysql.err.MySQLError as exc:
            log.warning("database connect to %s:%s failed: %s", s.db_host, s.db_port, exc)
            raise DependencyUnavailable("Database is unavailable") from exc
        except OSError as exc:
            raise DependencyUnavailable("Database is unavailable") from exc

    def discard(self) -> None:
        """Drop this thread's connection (after an error its state is unknown)."""
        slot = self._slot()
        conn, slot.conn = slot.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken socket may fail: nothing left to do
                log.debug("closing a broken connection failed", exc_info=True)

    def connection(self) -> pymysql.connections.Connection:
        """This thread's live connection: reused warm, pinged after idling, else new."""
        slot = self._slot()
        now = time.monotonic()
        if slot.conn is not None and now - slot.last_used > self.config.db_ping_after_idle:
            try:
                slot.conn.ping(reconnect=False)
            except (pymysql.err.MySQLError, OSError):
                self.discard()
        if slot.conn is None:
            slot.conn = self._connect()
        slot.last_used = now
        return slot.conn

    def _classify(self, exc: BaseException, *, before_commit: bool) -> BaseException:
        """Map a driver error to what callers handle; the connection is dropped when it is broken."""
        if isinstance(exc, OSError) or (
            isinstance(exc, pymysql.err.MySQLError)
            and (error_number(exc) in CONNECTION_ERRORS or isinstance(exc, pymysql.err.InterfaceError))
        ):
            self.discard()
            log.warning("database connection lost (%s)", exc)
            return ConnectionLost("Database is unavailable", before_commit=before_commit)
        number = error_number(exc)
        if number in RETRYABLE_ERRORS:
            return TransientConflict(f"Transaction conflict ({number})")
        return exc

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """One InnoDB transaction: commit on success, roll back on any error.

        Driver errors are classified here so callers see ``TransientConflict``,
        ``ConnectionLost`` / ``DependencyUnavailable`` or the original integrity error.
        """
        conn = self.connection()
        committing = False
        try:
            conn.begin()
            with conn.cursor() as cursor:
                yield cursor
            committing = True
            conn.commit()
        except (pymysql.err.MySQLError, OSError) as exc:
            mapped = self._classify(exc, before_commit=not committing)
            if not isinstance(mapped, ConnectionLost):
                self._rollback(conn)
            if mapped is exc:
                raise
            raise mapped from exc
        except BaseException:
            self._rollback(conn)
            raise
        finally:
            self._slot().last_used = time.monotonic()

    def _rollback(self, conn: pymysql.connections.Connection) -> None:
        try:
            conn.rollback()
        except (pymysql.err.MySQLError, OSError):
            self.discard()

    def _retrying(self, attempt_once: Callable[[], T], *, retry_lost: Callable[[ConnectionLost], bool]) -> T:
        """Bounded retries: deadlocks / lock waits with jittered backoff, one reconnect if allowed."""
        reconnected = False
        attempt = 0
        while True:
            attempt += 1
            try:
                return attempt_once()
            except TransientConflict:
                if attempt >= self.config.db_retry_attempts:
                    raise
                time.sleep(CONFLICT_BACKOFF.delay(attempt))
            except ConnectionLost as exc:
                if reconnected or not retry_lost(exc):
                    raise
                reconnected = True

    def run_in_transaction(self, work: Callable[[Cursor], T]) -> T:
        """Run ``work(cursor)`` in a transaction, retrying what is known to be safe.

        ``work`` must be re-runnable: it is called again after a deadlock / lock wait
        timeout (bounded by ``db_retry_attempts``, with jittered backoff) and once
        after a connection lost before COMMIT.
        """

        def once() -> T:
            with self.transaction() as cursor:
                return work(cursor)

        return self._retrying(once, retry_lost=lambda exc: exc.before_commit)

    def _statement(self, sql: str, params: tuple[Any, ...]) -> tuple[int, list[dict[str, Any]]]:
        conn = self.connection()
        try:
            with conn.cursor() as cursor:
                affected = cursor.execute(sql, params)
                return int(affected), list(cursor.fetchall())
        except (pymysql.err.MySQLError, OSError) as exc:
            mapped = self._classify(exc, before_commit=False)
            if mapped is exc:
                raise
            raise mapped from exc
        finally:
            self._slot().last_used = time.monotonic()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """One autocommit write (its own transaction: one round trip); returns affected rows.

        Not retried after a lost connection: the statement may have committed.
        """
        return self._retrying(lambda: self._statement(sql, params)[0], retry_lost=lambda exc: False)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """One autocommit read; retried once on a fresh connection (reads are always safe)."""
        return self._retrying(lambda: self._statement(sql, params)[1], retry_lost=lambda exc: True)

    def close(self) -> None:
        self.discard()


_lock = threading.Lock()
_database: Database | None = None


def get_database() -> Database:
    """The process-wide Database for the configured settings (created on first use)."""
    global _database
    if _database is None:
        with _lock:
            if _database is None:
                _database = Database(load_settings())
    return _database


def reset_database() -> None:
    """Forget the cached Database so the next call re-reads settings (tests, reconfiguration)."""
    global _database
    with _lock:
        if _database is not None:
            _database.close()
        _database = None
