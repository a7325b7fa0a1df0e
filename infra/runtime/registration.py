"""Keeping a function host registered with the registry (Eureka stand-in).

Registration must never stop a host from serving: the registry may start after the
host, restart, or be down. Every failure is logged and retried at the next renewal;
a renewal answered "unknown instance" (the registry lost or expired the lease)
registers again. The blocking client runs in a thread so the event loop (and the
invocations on it) never waits for the registry.
"""

from __future__ import annotations

import asyncio
import logging

from payfn_shared.registry import InstanceInfo, RegistryClient, RegistryError

log = logging.getLogger("payfn.runtime.registry")


class Registration:
    """Register on start, renew every ``renew_seconds``, cancel on stop."""

    def __init__(self, client: RegistryClient, instance: InstanceInfo, renew_seconds: float) -> None:
        self.client = client
        self.instance = instance
        self.renew_seconds = renew_seconds
        self.registered = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.renew_seconds)

    async def beat(self) -> None:
        """One heartbeat: register if not registered (or forgotten), else renew."""
        instance = self.instance
        try:
            if self.registered:
                self.registered = await asyncio.to_thread(
                    self.client.renew, instance.app, instance.instance_id)
                if not self.registered:
                    log.warning("registry forgot %s; registering again", instance.instance_id)
            if not self.registered:
                await asyncio.to_thread(self.client.register, instance)
                self.registered = True
                log.info("registered %s as %s", instance.app, instance.instance_id)
        except (RegistryError, OSError) as exc:
            self.registered = False
            log.warning("registry unavailable (%s); retrying in %.0f s", exc, self.renew_seconds)

    async def stop(self) -> None:
        """Stop renewing and cancel the lease, so the gateway stops routing here at once."""
        if self._task is not None:
            self._task.cancel()
        if not self.registered:
            return
        try:
            await asyncio.to_thread(self.client.cancel, self.instance.app, self.instance.instance_id)
            log.info("cancelled %s", self.instance.instance_id)
        except (RegistryError, OSError) as exc:
            log.warning("could not cancel %s: %s (the lease will expire)", self.instance.instance_id, exc)
        self.registered = False
