"""The one registry lease: register, renew, re-register when forgotten, bounded retry, cancel."""

from __future__ import annotations

import time
from typing import Any, cast

from payfn_shared.platform.registry import InstanceInfo, RegistryError, RegistryLease
from payfn_shared.platform.registry.lease import RETRY_CAP_SECONDS, RETRY_FIRST_SECONDS

INSTANCE = InstanceInfo("TEST-SERVICE", "i-1", "127.0.0.1", 9000)


class FakeClient:
    """Records the calls; ``down`` makes every call fail, ``known`` is what a renewal answers."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.down = False
        self.known = True

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise RegistryError("connection refused")

    def register(self, instance: InstanceInfo) -> None:
        self._call("register")
        self.known = True

    def renew(self, app: str, instance_id: str) -> bool:
        self._call("renew")
        return self.known

    def cancel(self, app: str, instance_id: str) -> None:
        self._call("cancel")


def lease(client: FakeClient, renew_seconds: float = 30.0) -> RegistryLease:
    return RegistryLease(cast(Any, client), INSTANCE, renew_seconds)


def test_registers_then_renews_and_registers_again_when_forgotten() -> None:
    client = FakeClient()
    subject = lease(client)
    subject.beat()
    subject.beat()
    client.known = False  # the registry restarted or expired the lease
    subject.beat()
    assert client.calls == ["register", "renew", "renew", "register"]
    assert subject.registered and subject.next_wait() == 30.0


def test_a_failure_is_retried_after_a_bounded_backoff_not_a_whole_interval() -> None:
    client = FakeClient()
    client.down = True
    subject = lease(client)
    waits = []
    for _ in range(6):
        subject.beat()
        waits.append(subject.next_wait())
    assert not subject.registered
    assert waits[0] == RETRY_FIRST_SECONDS
    assert waits == sorted(waits) and max(waits) == RETRY_CAP_SECONDS
    client.down = False
    subject.beat()
    assert subject.registered and subject.next_wait() == 30.0
    fast = lease(client, renew_seconds=0.5)
    client.down = True
    fast.beat()
    assert fast.next_wait() == 0.5, "never waits longer than the renewal interval"


def test_stop_cancels_only_a_registered_instance() -> None:
    client = FakeClient()
    subject = lease(client)
    subject.start()
    deadline = time.monotonic() + 5
    while not subject.registered and time.monotonic() < deadline:
        time.sleep(0.01)
    subject.stop()
    assert client.calls == ["register", "cancel"] and not subject.registered
    never = FakeClient()
    never.down = True
    unregistered = lease(never)
    unregistered.beat()
    unregistered.stop()
    assert never.calls == ["register"]
