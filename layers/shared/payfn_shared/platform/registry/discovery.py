"""Finding a live instance of a service: a local copy of the registry, round robin, quarantine.

The copy is refreshed by the caller (:meth:`Discovery.refresh`: the gateway on a
timer, an invoker when its copy is older than it tolerates), so a pick never waits
on the registry, except once when a service has no usable instance at all, in case
one has just registered. An instance that refuses a connection, or drops one before
answering (a SIGKILLed host), is quarantined locally: the registry still lists it
until its lease expires (up to 90 s), and nobody must keep sending every n-th request
to a dead port meanwhile. The quarantine lasts until the registry drops the instance,
or until a TCP connect to it succeeds again (probed every ``probe_interval`` seconds
on a daemon thread, never on a pick): a live instance whose connection was lost for
another reason is back within a probe, which matters when it is the only one. A
connect *timeout* should never quarantine (an overloaded host is alive). Thread-safe,
so an asyncio caller runs :meth:`refresh` through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from payfn_shared.platform.registry.client import InstanceInfo, RegistryClient, RegistryError

log = logging.getLogger("payfn.registry.discovery")
#: A service without a usable instance refreshes the copy at most this often (seconds).
PROMPT_REFRESH_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class DiscoveredInstance:
    """An UP instance of ``app`` that may be sent to."""

    app: str
    instance_id: str
    host: str
    port: int


class Discovery:
    """The registry as one process sees it; one per process (or per service), any thread."""

    def __init__(self, client: RegistryClient, probe_interval: float = 1.0,
                 connect_timeout: float = 1.0) -> None:
        self.client = client
        self.probe_interval = probe_interval
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._fetching = threading.Lock()
        self._fetches = 0
        self._last_ok = False
        self._instances: dict[str, list[DiscoveredInstance]] = {}
        self._cursor: dict[str, int] = {}
        self._quarantined: dict[str, threading.Event] = {}
        self.last_success = 0.0
        self.last_attempt = 0.0
        self.last_error: str | None = None

    @property
    def registry_reachable(self) -> bool:
        return self.last_error is None and self.last_success > 0

    def install(self, apps: Mapping[str, list[InstanceInfo]]) -> None:
        """Replace the local copy with the UP instances of ``apps``; lift quarantines of the departed."""
        copy: dict[str, list[DiscoveredInstance]] = {}
        with self._lock:
            for app, instances in apps.items():
                ups = sorted((i for i in instances if i.status == "UP"), key=lambda i: i.instance_id)
                copy[app] = [DiscoveredInstance(app, i.instance_id, i.host, i.port) for i in ups]
            self._instances = copy
            listed = {i.instance_id for instances in copy.values() for i in instances}
            departed = [i for i in self._quarantined if i not in listed]
            for instance_id in departed:
                self._quarantined.pop(instance_id).set()
        for instance_id in departed:
            log.info("quarantined instance %s left the registry", instance_id)

    def refresh(self) -> bool:
        """Fetch the registry once (blocking); a caller arriving during a fetch shares its result."""
        fetches = self._fetches
        with self._fetching:
            if self._fetches != fetches:
                return self._last_ok
            self.last_attempt = time.monotonic()
            try:
                self.install(self.client.apps())
                self.last_success, self.last_error, self._last_ok = time.monotonic(), None, True
            except (RegistryError, ValueError) as exc:
                if self.last_error is None:
                    log.warning("registry refresh failed (keeping the last known instances): %s", exc)
                self.last_error, self._last_ok = str(exc), False
            self._fetches += 1
            return self._last_ok

    def refresh_if_older(self, max_age: float) -> None:
        """Refresh when the last fetch was tried more than ``max_age`` seconds ago."""
        if time.monotonic() - self.last_attempt > max_age:
            self.refresh()

    def prompt_refresh_allowed(self) -> bool:
        """Whether a pick that found nothing may refresh now (at most every PROMPT_REFRESH_SECONDS)."""
        return time.monotonic() - self.last_attempt > PROMPT_REFRESH_SECONDS

    def pick(self, app: str, avoid: Collection[str] = ()) -> DiscoveredInstance | None:
        """Next usable instance of ``app`` in round-robin order, never a quarantined one.

        Instances in ``avoid`` (already tried for this request) are taken only when no
        other is usable, so a retry goes to another instance whenever there is one.
        """
        with self._lock:
            instances = self._instances.get(app)
            if not instances:
                return None
            start = self._cursor.get(app, 0)
            count = len(instances)
            fallback = None
            for step in range(count):
                instance = instances[(start + step) % count]
                if instance.instance_id in self._quarantined:
                    continue
                if instance.instance_id in avoid:
                    fallback = fallback or instance
                    continue
                self._cursor[app] = (start + step + 1) % count
                return instance
            return fallback

    def pick_or_refresh(self, app: str, avoid: Collection[str] = ()) -> DiscoveredInstance | None:
        """Like :meth:`pick`, but a service with no usable instance triggers one prompt refresh (blocking)."""
        instance = self.pick(app, avoid)
        if instance is None and self.prompt_refresh_allowed():
            self.refresh()
            instance = self.pick(app, avoid)
        return instance

    def suspend(self, instance: DiscoveredInstance, reason: str) -> None:
        """Take an instance out of rotation until it is gone from the registry or answers a connect."""
        with self._lock:
            if instance.instance_id in self._quarantined:
                return
            released = self._quarantined[instance.instance_id] = threading.Event()
        log.warning("instance %s at %s:%s %s; out of rotation until the registry drops it or it accepts "
                    "connections again", instance.instance_id, instance.host, instance.port, reason)
        threading.Thread(target=self._probe, args=(instance, released), daemon=True,
                         name=f"probe-{instance.instance_id}").start()

    def _probe(self, instance: DiscoveredInstance, released: threading.Event) -> None:
        """Lift the quarantine once the instance accepts a TCP connection (ends early if released)."""
        while not released.wait(self.probe_interval):
            if self._connects(instance):
                with self._lock:
                    if self._quarantined.get(instance.instance_id) is released:
                        del self._quarantined[instance.instance_id]
                released.set()
                log.info("instance %s at %s:%s accepts connections again; back in rotation",
                         instance.instance_id, instance.host, instance.port)

    def _connects(self, instance: DiscoveredInstance) -> bool:
        """Whether a TCP connection opens now (the cheapest proof that an instance is back)."""
        try:
            with socket.create_connection((instance.host, instance.port), timeout=self.connect_timeout):
                return True
        except OSError:
            return False

    def quarantined(self) -> list[str]:
        with self._lock:
            return sorted(self._quarantined)

    def endpoints(self) -> set[tuple[str, int]]:
        """``(host, port)`` of every instance in the copy (what a connection pool may keep)."""
        with self._lock:
            return {(i.host, i.port) for instances in self._instances.values() for i in instances}

    def snapshot(self) -> dict[str, list[str]]:
        with self._lock:
            return {app: [f"{i.host}:{i.port}" for i in listed] for app, listed in self._instances.items()}

    def close(self) -> None:
        """End the probes (the copy stays readable)."""
        with self._lock:
            probes, self._quarantined = list(self._quarantined.values()), {}
        for released in probes:
            released.set()
