"""The stack's dependency components, each started as a local process, and their start order.

MariaDB is :mod:`infra.stack.mariadb`; here are Redis, the Kafka broker, the AWS
emulator (moto) and Prometheus. Each proves itself healthy by one real protocol call
(a Redis PING, a Kafka metadata request, a DynamoDB call, Prometheus' readiness
endpoint) and then provisions idempotently (topics, tables, rules and targets), so
that a second ``payfn up`` changes nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from infra.stack.component import Component, StackError, http_ok
from infra.stack.mariadb import MariaDB

log = logging.getLogger(__name__)


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
