"""The real components of the local stack, each started as a local process.

A component knows how to prepare its data folder, the argv that runs it, one
real protocol call that proves it healthy (a SQL query, a Redis PING, a Kafka
metadata request, a DynamoDB call, Prometheus' readiness endpoint) and the
idempotent provisioning that follows (users, migrations, topics, tables).
Provisioning is idempotent so that a second ``payfn up`` changes nothing.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from payfn_shared.platform.config import Settings

from infra.sam.template import Template

log = logging.getLogger(__name__)

#: How long a component may take to answer its first health check.
DEFAULT_START_TIMEOUT = 45.0


class StackError(RuntimeError):
    """A failure the CLI reports as a readable message (never a traceback)."""


@dataclass(frozen=True)
class StackPaths:
    """Where the local stack keeps data, pid files and logs (all under one folder)."""

    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def data(self, name: str) -> Path:
        return self.root / name


class Component(ABC):
    """One local process of the stack."""

    #: Short name used in the status table, pid file and ``payfn logs NAME``.
    name: str
    #: Human name in messages.
    title: str
    #: Environment variable that moves this component's port.
    port_variable: str
    #: Seconds to wait after SIGTERM before SIGKILL.
    stop_timeout: float = 20.0
    start_timeout: float = DEFAULT_START_TIMEOUT
    #: False for processes on ephemeral ports (function hosts): nothing to collide with.
    fixed_port: bool = True
    #: Work no client waits on (consumers, the scheduler, the event-source poller,
    #: scraping): started ``PAYFN_BACKGROUND_NICE`` nicer, so that on a busy machine it
    #: yields the cores to the request path and catches up in the gaps, instead of
    #: adding its share to every request's latency.
    background: bool = False

    def __init__(self, settings: Settings, paths: StackPaths, template: Template) -> None:
        self.settings = settings
        self.paths = paths
        self.template = template

    @property
    @abstractmethod
    def host(self) -> str: ...

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def prepare(self) -> None:  # noqa: B027 - optional hook, most components need nothing
        """Create the data folder and whatever must exist before the first start."""

    @abstractmethod
    def command(self) -> list[str]:
        """argv that runs the component in the foreground."""

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def niceness(self) -> int:
        """What the supervisor adds to this component's niceness when it starts it."""
        return self.settings.background_nice if self.background else 0

    @abstractmethod
    def healthy(self) -> bool:
        """One real protocol call with a short timeout."""

    def provision(self, owned: bool) -> None:  # noqa: B027 - optional hook
        """Idempotent set-up after the component is healthy (``owned``: we started it)."""

    def url(self) -> str | None:
        """A URL worth printing for a person, if the component has one."""
        return None

    def before_stop(self) -> None:  # noqa: B027 - optional hook, most components stop on SIGTERM alone
        """Called just before our process of this component gets SIGTERM."""


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local http URL
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


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


class Redis(Component):
    name = "redis"
    title = "Redis"
    port_variable = "PAYFN_REDIS_PORT"

    @property
    def host(self) -> str:
        return self.settings.redis_host

    @property
    def port(self) -> int:
        return self.settings.redis_port

    def prepare(self) -> None:
        self.paths.data("redis").mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [
            server, "--port", str(self.port), "--bind", self.host, "--dir", str(self.paths.data("redis")),
            "--daemonize", "no", "--save", "60 1000", "--appendonly", "no", "--logfile", "",
            "--protected-mode", "yes", "--maxclients", "2000",
        ]

    def healthy(self) -> bool:
        import redis

        client = redis.Redis(host=self.host, port=self.port, password=self.settings.redis_password or None,
                             socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def url(self) -> str:
        return f"redis://{self.address}"


class KafkaBroker(Component):
    """The Kafka-protocol broker shipped in ``noida-db``.

    Stopping it takes two steps. SIGTERM alone snapshots the data, but records the
    broker acknowledged in the last fraction of a second before the signal can be
    missing from that snapshot (measured: 29–688 acknowledged records lost per stop
    under load), so an acknowledged payment event would vanish. ``noida-db stop kafka``
    first stops the Kafka service cleanly (no record lost in the same test), then the
    process gets its SIGTERM as every component does.
    """

    name = "kafka"
    title = "Kafka broker"
    port_variable = "PAYFN_KAFKA_BOOTSTRAP"
    stop_timeout = 30.0

    @property
    def host(self) -> str:
        return self.settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])

    def prepare(self) -> None:
        self.paths.data("kafka").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def binary() -> Path:
        import noida_db

        return Path(noida_db.__file__).parent / "noida-db"

    def command(self) -> list[str]:
        return [str(self.binary()), "start", "--data-dir", str(self.paths.data("kafka")), "--host", self.host,
                "--only", "kafka", "--kafka-port", str(self.port)]

    def before_stop(self) -> None:
        argv = [str(self.binary()), "stop", "kafka", "--data-dir", str(self.paths.data("kafka"))]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=self.stop_timeout,
                                    check=False)
        except subprocess.TimeoutExpired:
            log.warning("stopping the Kafka service of noida-db timed out; SIGTERM follows")
            return
        if result.returncode != 0:
            log.warning("stopping the Kafka service of noida-db failed (%s): %s", result.returncode,
                        (result.stderr or result.stdout).strip()[-300:])

    def healthy(self) -> bool:
        from infra.stack.kafka_admin import broker_ready

        return broker_ready(self.settings.kafka_bootstrap)

    def provision(self, owned: bool) -> None:
        """Create payfn's topics with a retention (``PAYFN_KAFKA_TOPIC_RETENTION_MS``, 6 h).

        noida-db otherwise keeps every record forever, and its autosave thread keeps
        re-serialising the whole snapshot (``.stack/kafka/kafka.json``): a stack holding
        960 MB of old benchmark events burned ~1.3 cores while idle. The outbox table,
        not Kafka, is the system of record, so 6 h locally outlasts any consumer outage
        we drill. On the broker we run, existing topics are brought to the retention
        too (topics created before it existed). A real Kafka or MSK keeps its own
        cluster settings: the value only applies to topics payfn creates there, and
        existing topics on a broker we did not start are left alone.
        """
        from infra.stack.kafka_admin import ensure_topics

        ensure_topics(self.settings.kafka_bootstrap, self.settings.kafka_topic_partitions,
                      retention_ms=self.settings.kafka_topic_retention_ms, alter_existing=owned)

    def url(self) -> str:
        return f"kafka://{self.address}"


class MotoServer(Component):
    """The local AWS emulator; holds the template's DynamoDB tables."""

    name = "moto"
    title = "AWS emulator (moto)"
    port_variable = "PAYFN_AWS_ENDPOINT_URL"

    def _split(self) -> tuple[str, int]:
        from urllib.parse import urlsplit

        parts = urlsplit(self.settings.aws_endpoint_url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    @property
    def host(self) -> str:
        return self._split()[0]

    @property
    def port(self) -> int:
        return self._split()[1]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("AWS_ACCESS_KEY_ID", "payfn-local")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "payfn-local")
        return env

    def healthy(self) -> bool:
        from infra.stack.aws import dynamodb_client

        try:
            dynamodb_client(self.settings, timeout=1).list_tables(Limit=1)
        except Exception:
            return False
        return True

    def provision(self, owned: bool) -> None:
        from infra.stack.aws import ensure_tables

        ensure_tables(self.settings, self.template.tables())

    def url(self) -> str:
        return self.settings.aws_endpoint_url


class Prometheus(Component):
    name = "prometheus"
    title = "Prometheus"
    port_variable = "PAYFN_PROMETHEUS_PORT"
    background = True

    @property
    def host(self) -> str:
        return self.settings.prometheus_host

    @property
    def port(self) -> int:
        return self.settings.prometheus_port

    @property
    def config_file(self) -> Path:
        return self.paths.data("prometheus") / "prometheus.yml"

    def prepare(self) -> None:
        from infra.stack.observability import render_prometheus_config

        (self.paths.data("prometheus") / "data").mkdir(parents=True, exist_ok=True)
        render_prometheus_config(self.settings, self.config_file)

    def command(self) -> list[str]:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        return [
            binary, f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.paths.data('prometheus') / 'data'}",
            f"--web.listen-address={self.address}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=3d", "--log.level=warn",
        ]

    def healthy(self) -> bool:
        return http_ok(f"{self.settings.prometheus_url}/-/ready")

    def provision(self, owned: bool) -> None:
        """Keep a running Prometheus on the current rules and targets: re-render, reload if changed."""
        from infra.stack.observability import render_prometheus_config

        if not owned:
            return
        if render_prometheus_config(self.settings, self.config_file):
            reload_url = f"{self.settings.prometheus_url}/-/reload"
            request = urllib.request.Request(reload_url, method="POST")  # noqa: S310 - local http URL
            try:
                with urllib.request.urlopen(request, timeout=5):  # noqa: S310 - local http URL
                    pass
            except (urllib.error.URLError, OSError) as error:
                raise StackError(f"Prometheus did not reload its configuration: {error}") from error

    def url(self) -> str:
        return self.settings.prometheus_url


#: Start order: storage first, then what depends on it.
INFRASTRUCTURE: tuple[type[Component], ...] = (MariaDB, Redis, KafkaBroker, MotoServer, Prometheus)

