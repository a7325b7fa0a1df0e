"""The gateway end to end with real function hosts (``infra.runtime.host``) and the registry."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from payfn_shared.registry import RegistryClient

from infra.registry.server import RegistryServer
from tests.gateway_support import function_host, gateway_thread, write_host_template
from tests.integration.registry_support import aws_endpoint, running_registry, wait_until


@pytest.fixture(scope="module")
def endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from aws_endpoint(request)


@pytest.fixture
def registry(endpoint: str) -> Iterator[RegistryServer]:
    with running_registry(endpoint) as server:
        yield server


def test_requests_reach_real_hosts_and_survive_a_killed_one(tmp_path: Path, registry: RegistryServer) -> None:
    template = write_host_template(tmp_path)
    client = RegistryClient(registry.url, timeout=10)
    with function_host(template, "INGEST-SERVICE", registry.url) as (first, _), \
            function_host(template, "INGEST-SERVICE", registry.url) as (_second, second_port):
        wait_until(lambda: len(client.instances("INGEST-SERVICE")) == 2)
        with gateway_thread(template, registry.url) as gateway:
            pids = set()
            for _ in range(4):
                status, _headers, body = gateway.request("GET", "/api/payments/p-7")
                assert status == 200, body
                answer = json.loads(body)
                assert answer["path"] == "/payments/p-7" and answer["pathParameters"] == {"paymentId": "p-7"}
                pids.add(answer["pid"])
            assert len(pids) == 2
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            statuses = [gateway.request("GET", "/api/payments/noop")[0] for _ in range(6)]
            assert statuses == [200] * 6
            assert [i.port for i in client.instances("INGEST-SERVICE")].count(second_port) == 1
