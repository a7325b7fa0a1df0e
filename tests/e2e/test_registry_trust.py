"""The registry's trust boundary on the live stack: a process without the stack's credentials
cannot put itself in front of payment traffic, nor take the real instances out."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from payfn_shared.platform.config import Settings
from payfn_shared.platform.registry import InstanceInfo, RegistryClient

from tests.e2e.gateway_client import call
from tests.hostile import exchange, request


class RogueHost:
    """A listener that counts the connections it is sent (a forged INGEST-SERVICE instance)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def rogue() -> Iterator[RogueHost]:
    host = RogueHost()
    yield host
    host.close()


def _write(
    settings: Settings, method: str, path: str, body: bytes = b"", authorization: str | None = None
) -> int:
    headers = {"Content-Type": "application/json"} if body else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    return exchange(
        settings.registry_host,
        settings.registry_port,
        request(method, f"/eureka{path}", settings.registry_host, headers, body),
    ).status


def _wrong(settings: Settings) -> str:
    return "Basic " + base64.b64encode(f"{settings.registry_user}:not-the-password".encode()).decode()


def test_a_rogue_registration_is_401_and_receives_no_traffic(platform: Any, rogue: RogueHost) -> None:
    settings: Settings = platform.settings
    forged = InstanceInfo("INGEST-SERVICE", f"rogue-{uuid.uuid4().hex[:6]}", "127.0.0.1", rogue.port)
    body = json.dumps({"instance": forged.to_eureka()}).encode()
    assert _write(settings, "POST", "/apps/INGEST-SERVICE", body) == 401
    assert _write(settings, "POST", "/apps/INGEST-SERVICE", body, _wrong(settings)) == 401
    assert _write(settings, "POST", "/apps/INGEST-SERVICE", body, "Bearer anything") == 401
    (real,) = [
        i for i in RegistryClient(settings.registry_url).instances("INGEST-SERVICE") if i.status == "UP"
    ]
    hijack = real.to_eureka() | {
        "hostName": "127.0.0.1",
        "ipAddr": "127.0.0.1",
        "port": {"$": rogue.port, "@enabled": "true"},
    }
    assert (
        _write(
            settings,
            "POST",
            "/apps/INGEST-SERVICE",
            json.dumps({"instance": hijack}).encode(),
            _wrong(settings),
        )
        == 401
    )
    for method, path in (
        ("PUT", f"/apps/INGEST-SERVICE/{real.instance_id}/status?value=OUT_OF_SERVICE"),
        ("DELETE", f"/apps/INGEST-SERVICE/{real.instance_id}"),
        ("PUT", f"/apps/INGEST-SERVICE/{real.instance_id}"),
    ):
        assert _write(settings, method, path) == 401, (method, path)
    time.sleep(2.5)  # longer than the gateway's registry refresh: a forged instance would be in rotation now
    listed = RegistryClient(settings.registry_url).instances("INGEST-SERVICE")
    assert [(i.instance_id, i.port, i.status) for i in listed] == [(real.instance_id, real.port, "UP")]
    merchant = f"TRUST{uuid.uuid4().hex[:8]}"
    for n in range(20):
        reply = call(
            settings.gateway_url,
            "POST",
            "/api/payments/authorize",
            {"merchantId": merchant, "amount": 100, "currency": "USD", "idempotencyKey": f"t-{n}"},
        )
        assert reply.status == 200, reply.body
    assert rogue.accepted == 0


def test_the_stacks_own_account_still_registers_and_owns_its_instances(
    platform: Any, rogue: RogueHost
) -> None:
    settings: Settings = platform.settings
    client = RegistryClient(settings.registry_url, credentials=settings.registry_credentials)
    instance = InstanceInfo("TRUST-TEST", f"own-{uuid.uuid4().hex[:6]}", "127.0.0.1", rogue.port)
    client.register(instance)
    try:
        assert client.renew(instance.app, instance.instance_id)
        assert (
            _write(settings, "DELETE", f"/apps/TRUST-TEST/{instance.instance_id}", b"", _wrong(settings))
            == 401
        )
        assert [i.instance_id for i in client.instances("TRUST-TEST")] == [instance.instance_id]
    finally:
        client.cancel(instance.app, instance.instance_id)
    assert client.instances("TRUST-TEST") == []
