"""The shared discovery: retries avoid tried instances, quarantine lasts as long as it must."""

from __future__ import annotations

import socket
import time

from payfn_shared.platform.registry import Discovery, InstanceInfo, RegistryClient

from infra.stack.process import free_port

APP = "INGEST-SERVICE"


def directory(probe_interval: float = 60.0) -> Discovery:
    return Discovery(RegistryClient("http://127.0.0.1:1/eureka"), probe_interval=probe_interval)


def instances(*ports: int) -> dict[str, list[InstanceInfo]]:
    return {APP: [InstanceInfo(APP, f"i-{port}", "127.0.0.1", port) for port in ports]}


def test_a_retry_prefers_an_instance_not_tried_yet() -> None:
    services = directory()
    services.install(instances(1001, 1002, 1003))
    first = services.pick(APP, set())
    assert first is not None and first.instance_id == "i-1001"
    retry = services.pick(APP, {"i-1001", "i-1002"})
    assert retry is not None and retry.instance_id == "i-1003"
    only_tried = services.pick(APP, {"i-1001", "i-1002", "i-1003"})
    assert only_tried is not None, "with every instance tried, a usable one is tried again"


def test_quarantine_lasts_until_the_registry_drops_the_instance() -> None:
    services = directory(probe_interval=0.01)
    dead = free_port()
    services.install(instances(dead, 1002))
    target = services.pick(APP, {"i-1002"})
    assert target is not None and target.port == dead
    services.suspend(target, "dropped a connection")
    time.sleep(0.1)  # probes keep being refused: still out of rotation
    assert services.quarantined() == [f"i-{dead}"]
    picks = {services.pick(APP, set()).instance_id for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {"i-1002"}
    assert services.pick(APP, {"i-1002"}) is not None  # the fallback never picks a quarantined one
    services.install(instances(1002))
    assert services.quarantined() == []
    services.close()


def test_quarantine_ends_when_a_probe_connects() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        services = directory(probe_interval=0.01)
        services.install(instances(port))
        target = services.pick(APP, set())
        assert target is not None
        services.suspend(target, "dropped a connection")
        assert services.pick(APP, set()) is None
        for _ in range(200):
            if not services.quarantined():
                break
            time.sleep(0.01)
        assert services.pick(APP, set()) is target
        services.close()
