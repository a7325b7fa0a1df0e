"""Keeping one instance registered with the registry (Eureka stand-in), for every process.

Registration must never stop a process from serving: the registry may start after
it, restart, or be down. So every failure is logged and retried, and a renewal
answered "unknown instance" (the registry lost or expired the lease) registers again
at once. The heartbeat runs on a daemon thread with the blocking client, which suits
both kinds of process: a blocking main loop (scheduler, poller) never sees it, and an
asyncio server (gateway, function hosts) never waits for the registry on its loop —
it calls the blocking :meth:`RegistryLease.stop` through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import threading

from payfn_shared.platform.registry.client import (
    DEFAULT_RENEWAL_INTERVAL,
    InstanceInfo,
    RegistryClient,
    RegistryError,
)

log = logging.getLogger("payfn.registry.lease")
#: First wait before retrying a failed call; it doubles per failure up to :data:`RETRY_CAP_SECONDS`.
RETRY_FIRST_SECONDS = 1.0
#: Longest wait between retries (never longer than the renewal interval itself).
RETRY_CAP_SECONDS = 5.0
#: How long ``stop`` waits for a beat in flight (the client's own timeout bounds it).
STOP_JOIN_SECONDS = 5.0


class RegistryLease:
    """Register on ``start``, renew every ``renew_seconds``, cancel on ``stop``; never fatal.

    A failed call is retried after a bounded backoff (1 s, 2 s, 4 s, then every 5 s,
    never longer than ``renew_seconds``), not at the next renewal: of the two former
    heartbeats, the background processes' quick retry was the better one, because
    waiting a whole interval (30 s) kept a process that started before the registry
    invisible for that long, and two missed beats in a row come close to the 90 s
    lease. Once registered, it renews at the plain interval again.
    """

    def __init__(self, client: RegistryClient, instance: InstanceInfo,
                 renew_seconds: float = DEFAULT_RENEWAL_INTERVAL) -> None:
        self.client = client
        self.instance = instance
        self.renew_seconds = renew_seconds
        self.registered = False
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.next_wait())

    def next_wait(self) -> float:
        """Seconds until the next beat: the renewal interval, or the backoff after failures."""
        if self.failures == 0:
            return self.renew_seconds
        backoff = RETRY_FIRST_SECONDS * 2 ** (self.failures - 1)
        return min(backoff, RETRY_CAP_SECONDS, self.renew_seconds)

    def beat(self) -> None:
        """One heartbeat: register if not registered (or forgotten), else renew."""
        instance = self.instance
        try:
            if self.registered:
                self.registered = self.client.renew(instance.app, instance.instance_id)
                if not self.registered:
                    log.warning("registry forgot %s; registering again", instance.instance_id)
            if not self.registered:
                self.client.register(instance)
                self.registered = True
                log.info("registered %s as %s", instance.app, instance.instance_id)
            self.failures = 0
        except (RegistryError, OSError) as exc:
            self.registered = False
            self.failures += 1
            log.warning("registry unavailable (%s); retrying in %.0f s", exc, self.next_wait())

    def stop(self) -> None:
        """Stop renewing and cancel the lease, so that nobody discovers this instance any more.

        Blocking (a beat in flight finishes first, then the cancel call): an asyncio
        process awaits ``asyncio.to_thread(lease.stop)``.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_JOIN_SECONDS)
        if self.registered:
            try:
                self.client.cancel(self.instance.app, self.instance.instance_id)
                log.info("cancelled %s", self.instance.instance_id)
            except (RegistryError, OSError) as exc:
                log.warning("could not cancel %s: %s (the lease will expire)", self.instance.instance_id, exc)
        self.registered = False
