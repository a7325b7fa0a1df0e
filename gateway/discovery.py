"""``lb://NAME`` resolution: a local copy of the registry, round-robin over UP instances.

The copy is refreshed in the background every ``refresh_interval`` seconds (the
request path never waits on the registry, except once when a service has no
instance at all, in case one has just registered).

An instance that refuses a connection, or drops one before answering (a SIGKILLed
host), is quarantined locally: the registry still lists it until its lease expires
(up to 90 s), and the gateway must not keep sending every n-th request to a dead
port meanwhile. The quarantine lasts until the registry drops the instance, or until
a TCP connect to it succeeds again (probed every ``probe_interval`` seconds in the
background, never on a request): a live instance whose connection was lost for
another reason is back within a probe, which matters when it is the only one.
A connect *timeout* never quarantines (an overloaded host is alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import orjson
from payfn_shared.registry import InstanceInfo, parse_applications

from gateway.upstream import UpstreamError, UpstreamPool

log = logging.getLogger("payfn.gateway.discovery")


@dataclass(slots=True)
class Target:
    """An UP instance the gateway may send to, with its connection pool."""

    instance_id: str
    host: str
    port: int
    pool: UpstreamPool


class ServiceDirectory:
    """The registry as the gateway sees it; one per gateway process, used on its event loop."""

    def __init__(self, registry_url: str, refresh_interval: float = 2.0, probe_interval: float = 1.0,
                 pool_size: int = 64, connect_timeout: float = 1.0) -> None:
        base = registry_url.rstrip("/")
        self._registry_path = ("" if base.endswith("/eureka") else "/eureka") + "/apps"
        host_port = base.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        self._registry = UpstreamPool(host or host_port, int(port or 80), max_idle=2,
                                      connect_timeout=connect_timeout)
        self.refresh_interval = refresh_interval
        self.probe_interval = probe_interval
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._targets: dict[str, list[Target]] = {}
        self._pools: dict[tuple[str, int], UpstreamPool] = {}
        self._cursor: dict[str, int] = {}
        self._quarantined: dict[str, asyncio.Task[None]] = {}
        self._refreshing: asyncio.Future[bool] | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_success = 0.0
        self.last_attempt = 0.0
        self.last_error: str | None = None

    @property
    def registry_reachable(self) -> bool:
        return self.last_error is None and self.last_success > 0

    def _pool(self, host: str, port: int) -> UpstreamPool:
        key = (host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = UpstreamPool(host, port, self.pool_size, self.connect_timeout)
        return pool

    def install(self, apps: dict[str, list[InstanceInfo]]) -> None:
        """Replace the local copy (keeping pools of instances still there, closing the others)."""
        targets: dict[str, list[Target]] = {}
        live: set[tuple[str, int]] = set()
        for app, instances in apps.items():
            ups = sorted((i for i in instances if i.status == "UP"), key=lambda i: i.instance_id)
            targets[app] = [Target(i.instance_id, i.host, i.port, self._pool(i.host, i.port)) for i in ups]
            live.update((i.host, i.port) for i in ups)
        for key in [k for k in self._pools if k not in live]:
            self._pools.pop(key).close()
        self._targets = targets
        listed = {t.instance_id for app_targets in targets.values() for t in app_targets}
        for instance_id in [i for i in self._quarantined if i not in listed]:
            log.info("quarantined instance %s left the registry", instance_id)
            self._quarantined.pop(instance_id).cancel()

    async def refresh(self) -> bool:
        """Fetch the registry once; concurrent callers share the same fetch."""
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        self._refreshing = asyncio.get_running_loop().create_future()
        self.last_attempt = time.monotonic()
        ok = False
        try:
            response = await self._registry.request(
                "GET", self._registry_path, headers=[("Accept", "application/json")], timeout=2.0)
            if response.status != 200:
                raise UpstreamError(f"registry answered HTTP {response.status}")
            self.install(parse_applications(orjson.loads(response.body)))
            self.last_success, self.last_error, ok = time.monotonic(), None, True
        except (UpstreamError, ValueError) as exc:
            if self.last_error is None:
                log.warning("registry refresh failed (keeping the last known instances): %s", exc)
            self.last_error = str(exc)
        finally:
            self._refreshing.set_result(ok)
            self._refreshing = None
        return ok

    async def _loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._registry.close()
        for probe in self._quarantined.values():
            probe.cancel()
        self._quarantined.clear()
        for pool in self._pools.values():
            pool.close()

    def suspend(self, target: Target, reason: str) -> None:
        """Take an instance out of this gateway's rotation until it is gone or answers a connect."""
        if target.instance_id in self._quarantined:
            return
        log.warning("instance %s at %s:%s %s; out of rotation until the registry drops it or it accepts "
                    "connections again", target.instance_id, target.host, target.port, reason)
        self._quarantined[target.instance_id] = asyncio.get_running_loop().create_task(self._probe(target))

    async def _probe(self, target: Target) -> None:
        """Lift the quarantine once the instance accepts a TCP connection (cancelled if it leaves)."""
        while True:
            await asyncio.sleep(self.probe_interval)
            if await target.pool.probe():
                break
        log.info("instance %s at %s:%s accepts connections again; back in rotation",
                 target.instance_id, target.host, target.port)
        self._quarantined.pop(target.instance_id, None)

    def quarantined(self) -> list[str]:
        return sorted(self._quarantined)

    def pick(self, app: str, avoid: set[str]) -> Target | None:
        """Next usable instance of ``app`` in round-robin order, never a quarantined one.

        Instances in ``avoid`` (already tried for this request) are taken only when no
        other is usable, so a retry goes to another instance whenever there is one.
        """
        targets = self._targets.get(app)
        if not targets:
            return None
        start = self._cursor.get(app, 0)
        count = len(targets)
        fallback = None
        for step in range(count):
            target = targets[(start + step) % count]
            if target.instance_id in self._quarantined:
                continue
            if target.instance_id in avoid:
                fallback = fallback or target
                continue
            self._cursor[app] = (start + step + 1) % count
            return target
        return fallback

    async def pick_or_refresh(self, app: str, avoid: set[str]) -> Target | None:
        """Like :meth:`pick`, but a service with no usable instance triggers one prompt refresh."""
        target = self.pick(app, avoid)
        if target is None and time.monotonic() - self.last_attempt > 0.5:
            await self.refresh()
            target = self.pick(app, avoid)
        return target

    def snapshot(self) -> dict[str, list[str]]:
        return {app: [f"{t.host}:{t.port}" for t in targets] for app, targets in self._targets.items()}
