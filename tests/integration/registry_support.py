"""Helpers shared by the registry and gateway integration tests (plain functions, no fixtures).

The tests need a DynamoDB endpoint: the shared ``stack`` fixture's moto when the
suite has one, else a private moto server started here. Each registry runs in
process on a free port over its own table (created from the template's own
definition of ``RegistryTable``), so tests never see each other's instances.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from payfn_shared.platform.config import Settings, load_settings
from payfn_shared.platform.registry import RegistryClient

from infra.registry.accounts import RegistryAccounts
from infra.registry.server import RegistryConfig, RegistryServer
from infra.registry.store import RegistryStore, now_millis
from infra.sam.template import load_template
from infra.stack.aws import create_table_request, dynamodb_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy (returned) or fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError as exc:
        return getattr(exc, "code", None) is not None


@contextmanager
def private_moto() -> Iterator[str]:
    """A moto server of our own on a free port; yields its endpoint URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _reachable(url + "/moto-api/"), timeout=30)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def aws_endpoint(request: pytest.FixtureRequest) -> Iterator[str]:
    """Generator for a session fixture: the stack's moto if there is one, else a private one."""
    try:
        stack = request.getfixturevalue("stack")
    except pytest.FixtureLookupError:
        with private_moto() as url:
            yield url
        return
    yield stack.settings.aws_endpoint_url


class FakeClock:
    """Epoch milliseconds the test moves forward, so lease expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = now_millis()

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1000)


@contextmanager
def running_registry(
    endpoint: str,
    config: RegistryConfig | None = None,
    clock: Callable[[], int] = now_millis,
    cache_ttl: float = 0.0,
    accounts: RegistryAccounts | None = None,
) -> Iterator[RegistryServer]:
    """A registry server in a thread over a fresh table shaped like the template's RegistryTable."""
    settings = replace(Settings(), aws_endpoint_url=endpoint)
    client = dynamodb_client(settings)
    (spec,) = [t for t in load_template().tables() if t.logical_id == "RegistryTable"]
    request = create_table_request(spec)
    request["TableName"] = f"registry-test-{uuid.uuid4().hex[:10]}"
    client.create_table(**request)
    store = RegistryStore(client, request["TableName"], cache_ttl=cache_ttl, clock=clock)
    accounts = accounts or RegistryAccounts.from_settings(load_settings())
    server = RegistryServer(store, config or RegistryConfig(), accounts)
    server.start_in_thread("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.stop()
        client.delete_table(TableName=request["TableName"])


def registry_client(url: str, timeout: float = 10) -> RegistryClient:
    """A client that writes with the stack's registry account (what payfn's processes use)."""
    return RegistryClient(url, timeout=timeout, credentials=load_settings().registry_credentials)
