"""The MariaDB component: a private data folder, ``mariadbd`` on it, and paydb's users and schema.

It is healthy when a SQL query answers (access denied too, before its users exist).
Provisioning runs the migrations; on a server we started it first creates paydb,
``payuser`` who owns it and ``payreader`` who may only SELECT, bounded by the server
itself (statement time, connections), and afterwards the event that ends the reader's
sessions that lock rows or run too long (``migrations/admin/reader_guard.sql``).
Every step is idempotent.
"""

from __future__ import annotations

import getpass
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from infra.stack.component import Component, StackError


class MariaDB(Component):
    name = "mariadb"
    title = "MariaDB"
    port_variable = "PAYFN_DB_PORT"
    stop_timeout = 60.0

    @property
    def host(self) -> str:
        return self.settings.db_host

    @property
    def port(self) -> int:
        return self.settings.db_port

    @property
    def datadir(self) -> Path:
        return self.paths.data("mariadb") / "data"

    @property
    def socket(self) -> Path:
        """The admin socket; kept short because a unix socket path is limited to 107 bytes."""
        path = self.paths.data("mariadb") / "mysqld.sock"
        if len(str(path)) > 100:
            digest = hashlib.sha1(str(self.paths.root).encode(), usedforsecurity=False).hexdigest()[:12]
            path = Path(tempfile.gettempdir()) / f"payfn-{digest}-mysqld.sock"
        return path

    def prepare(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        installer = shutil.which("mariadb-install-db")
        if installer is None:
            raise StackError("mariadb-install-db not found: install mariadb-server (make up does it)")
        self.datadir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [installer, "--no-defaults", f"--datadir={self.datadir}", f"--user={getpass.getuser()}",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(self.datadir, ignore_errors=True)
            output = result.stdout + result.stderr
            raise StackError(f"mariadb-install-db failed ({result.returncode}):\n{output}")

    def command(self) -> list[str]:
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        return [
            server, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
            f"--bind-address={self.host}", f"--socket={self.socket}",
            f"--pid-file={self.paths.data('mariadb') / 'mariadbd.pid'}", f"--user={getpass.getuser()}",
            "--skip-name-resolve", "--max-connections=600", "--innodb-buffer-pool-size=256M",
            "--innodb-flush-log-at-trx-commit=1", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci", "--event-scheduler=ON",
        ]

    def _connect(self, user: str, password: str, database: str | None = None):
        import pymysql

        return pymysql.connect(
            host=self.host, port=self.port, user=user, password=password, database=database,
            connect_timeout=2, read_timeout=30, write_timeout=30, autocommit=True,
        )

    def healthy(self) -> bool:
        import pymysql

        try:
            connection = self._connect(self.settings.db_user, self.settings.db_password)
        except pymysql.err.OperationalError as error:
            # Access denied still proves a live MariaDB speaking its protocol: before
            # provisioning, payuser does not exist yet.
            return error.args[0] in (1044, 1045, 1049, 1130)
        with connection, connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)

    def _admin_sql(self, sql: str) -> None:
        client = shutil.which("mariadb") or shutil.which("mysql")
        if client is None:
            raise StackError("the mariadb client is missing: install mariadb-client")
        result = subprocess.run(
            [client, "--no-defaults", f"--socket={self.socket}", "-uroot", "--batch"],
            input=sql, capture_output=True, text=True, check=False, timeout=60,
        )
        if result.returncode != 0:
            raise StackError(f"MariaDB provisioning failed: {result.stderr.strip()}")

    def provision(self, owned: bool) -> None:
        from infra.stack.schema import apply_migrations

        s = self.settings
        if owned:
            self._admin_sql(self._users_sql())
        connection = self._connect(s.db_user, s.db_password, s.db_name)
        with connection:
            apply_migrations(connection)
        if owned:
            self._admin_sql(f"USE `{s.db_name}`;\n" + self._reader_guard_sql())

    def _users_sql(self) -> str:
        """payuser owns paydb; payreader may only SELECT, with the server's own bounds on it."""
        s = self.settings
        statements = [f"CREATE DATABASE IF NOT EXISTS `{s.db_name}` CHARACTER SET utf8mb4"]
        reader_limits = (f" WITH MAX_STATEMENT_TIME {s.db_readonly_statement_seconds}"
                         f" MAX_USER_CONNECTIONS {s.db_readonly_max_connections}")
        for user, password, grant, limits in (
            (s.db_user, s.db_password, "ALL PRIVILEGES", ""),
            (s.db_readonly_user, s.db_readonly_password, "SELECT", reader_limits),
        ):
            for origin in ("127.0.0.1", "localhost", "::1"):
                statements += [
                    f"CREATE USER IF NOT EXISTS '{user}'@'{origin}' IDENTIFIED BY '{password}'",
                    f"ALTER USER '{user}'@'{origin}' IDENTIFIED BY '{password}'{limits}",
                    f"GRANT {grant} ON `{s.db_name}`.* TO '{user}'@'{origin}'",
                ]
        return ";\n".join(statements) + ";\n"

    def _reader_guard_sql(self) -> str:
        """The event that ends the read-only user's sessions that lock rows or run too long."""
        s = self.settings
        template = (Path(__file__).resolve().parent / "migrations" / "admin" / "reader_guard.sql").read_text(
            encoding="utf-8")
        return (template.replace("{reader}", s.db_readonly_user)
                .replace("{statement_seconds}", str(s.db_readonly_statement_seconds + 1))
                .replace("{transaction_seconds}", str(s.db_readonly_transaction_seconds)))

    def url(self) -> str:
        return f"mysql://{self.settings.db_user}@{self.address}/{self.settings.db_name}"
