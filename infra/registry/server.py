"""The registry's HTTP face: Eureka's REST API, a dashboard, health and metrics.

Reads are open; writes need a registry account (``infra.registry.accounts``) and only
the account that registered a lease may change it. Register bodies go through the
one validator (``eureka.instance_from_document``), so what is stored always lists.
This module wires the server (config, metrics, lease sweep, error answers); the
routes and their handlers are in ``infra.registry.routes``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from payfn_shared.platform.config import ConfigError
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from infra.net.http_metrics import http_server_requests, outcome_of
from infra.net.limits import Limits, load_limits
from infra.net.messages import Request, Response
from infra.net.server import HttpServer, ThreadedServer, blocking
from infra.registry.accounts import RegistryAccounts
from infra.registry.routes import Call, Reply
from infra.registry.store import Instance, NotOwnerError, RegistryStore, UnknownInstanceError

log = logging.getLogger("payfn.registry")


@dataclass(frozen=True)
class RegistryConfig:
    """Lease and cache knobs (``PAYFN_REGISTRY_*``); a client's own leaseInfo wins when it sends one."""

    registry_lease_duration: int = 90
    registry_renewal_interval: int = 30
    registry_eviction_interval: float = 60.0
    registry_cache_ttl: float = 1.0

    def validate(self) -> None:
        if self.registry_lease_duration < 1 or self.registry_renewal_interval < 1:
            raise ConfigError("PAYFN_REGISTRY_LEASE_DURATION and _RENEWAL_INTERVAL must be ≥ 1 s")
        if self.registry_renewal_interval >= self.registry_lease_duration:
            raise ConfigError("PAYFN_REGISTRY_RENEWAL_INTERVAL must be shorter than the lease duration")
        if self.registry_eviction_interval <= 0 or self.registry_cache_ttl < 0:
            raise ConfigError("PAYFN_REGISTRY_EVICTION_INTERVAL must be > 0 and _CACHE_TTL ≥ 0")


class _InstancesCollector(Collector):
    """``registry_instances{app,status}`` computed from the (cached) leases at scrape time."""

    def __init__(self, store: RegistryStore) -> None:
        self._store = store

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "registry_instances", "Live registered instances", labels=["app", "status"]
        )
        counts: dict[tuple[str, str], int] = {}
        for instance in self._store.all_instances():
            key = (instance.app, instance.status)
            counts[key] = counts.get(key, 0) + 1
        for (app, status), count in sorted(counts.items()):
            family.add_metric([app, status], count)
        yield family


class RegistryMetrics:
    """The registry's own Prometheus registry (one per server, so tests can run several)."""

    def __init__(self, store: RegistryStore) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_InstancesCollector(store))
        self.operations = Counter(
            "registry_operations", "Eureka operations by kind and outcome",
            ["operation", "outcome"], registry=self.registry,
        )
        self.evictions = Counter("registry_evictions", "Leases evicted by the sweep", registry=self.registry)
        self.requests = http_server_requests(self.registry)


#: Register bodies are a few KiB (metadata is bounded at 16 KiB by ``eureka``).
REGISTRY_MAX_BODY_BYTES = 64 * 1024


class RegistryServer:
    """Eureka's REST API over a :class:`RegistryStore`, on the one HTTP server.

    The store's calls block (boto3), so requests are answered on a thread pool; the
    event loop only frames and writes. ``start_in_thread`` serves from a thread of
    its own (the registry's main and the tests use it).
    """

    def __init__(self, store: RegistryStore, config: RegistryConfig, accounts: RegistryAccounts,
                 limits: Limits | None = None) -> None:
        self.store = store
        self.config = config
        self.accounts = accounts
        self.metrics = RegistryMetrics(store)
        self.started = time.time()
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="registry")
        self.http = HttpServer(blocking(self.handle, self._executor),
                               limits or load_limits(REGISTRY_MAX_BODY_BYTES))
        self._thread: ThreadedServer | None = None
        self.host, self.port = "127.0.0.1", 0
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="registry-sweep", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start_in_thread(self, host: str, port: int) -> int:
        """Listen (raises what binding raised) and serve from a thread; returns the port."""
        self._thread = ThreadedServer(self.http, host, port)
        self.host, self.port = host, self._thread.start()
        return self.port

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def start_sweeper(self) -> None:
        self._sweeper.start()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.config.registry_eviction_interval):
            self.sweep()

    def sweep(self) -> list[Instance]:
        """Evict expired leases now; failures are logged (the next sweep tries again)."""
        try:
            evicted = self.store.evict_expired()
        except (BotoCoreError, ClientError) as exc:
            log.warning("eviction sweep failed: %s", exc)
            return []
        for instance in evicted:
            log.info("evicted %s/%s (lease expired)", instance.app, instance.instance_id)
        self.metrics.evictions.inc(len(evicted))
        return evicted

    def handle(self, request: Request) -> Response:
        """Route one request; every answer is counted in ``http_server_requests_seconds``."""
        start = time.perf_counter()
        call = Call(self, request)
        route, handler = call.route()
        try:
            response = handler()
        except Reply as reply:
            response = call.reply(reply.status, reply.message, reply.headers)
        except UnknownInstanceError as exc:
            response = call.reply(404, f"unknown instance {exc}")
        except NotOwnerError as exc:
            call.count("forbidden")
            response = call.reply(403, f"instance {exc} was registered by another account")
        except (BotoCoreError, ClientError) as exc:
            log.warning("DynamoDB call failed: %s", exc)
            response = call.reply(503, "registry table unavailable")
        self.metrics.requests.labels("registry", route, request.method, str(response.status),
                                     outcome_of(response.status)).observe(time.perf_counter() - start)
        return response
