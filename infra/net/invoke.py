"""Invoking a function the way AWS's event sources do: Lambda's Invoke API on a live instance.

The scheduler and the Kafka event-source poller find the function's service in
the registry, pick an UP instance round-robin and ``POST
/2015-03-31/functions/{name}/invocations`` on it. An instance that refuses the
connection is skipped for the next one (the registry may lag a dead host by a
lease); only when none answers does the caller see :class:`InvokeUnavailable`,
which means "nothing ran, try again later", never "the function failed".
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from payfn_shared.registry import InstanceInfo, RegistryClient, RegistryError

INVOKE_PATH = "/2015-03-31/functions/{name}/invocations"
#: The stack's token on the function hosts' Invoke API (``PAYFN_INVOKE_TOKEN``; 403 without it).
INVOKE_TOKEN_HEADER = "x-payfn-invoke-token"  # noqa: S105 - a header name, not a secret


class InvokeUnavailable(RuntimeError):
    """No instance of the service could take the invocation (nothing ran)."""


@dataclass(frozen=True)
class InvokeResult:
    """Lambda's answer: ``function_error`` is the ``X-Amz-Function-Error`` header (None if ok)."""

    status: int
    function_error: str | None
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None

    @property
    def error_type(self) -> str:
        """``errorType`` of a function error payload (Lambda's shape), else a generic name."""
        try:
            body = self.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("errorType"):
            return str(body["errorType"])
        return self.function_error or f"HTTP{self.status}"

    @property
    def error_message(self) -> str:
        try:
            body = self.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "errorMessage" in body:
            return str(body["errorMessage"])
        return self.payload[:500].decode("utf-8", "replace")


class ServiceInvoker:
    """Round-robin invoker over the registry's UP instances of one service."""

    def __init__(self, registry: RegistryClient, service: str, token: str = "",
                 refresh_seconds: float = 2.0) -> None:
        self.registry = registry
        self.service = service
        self.token = token
        self.refresh_seconds = refresh_seconds
        self._instances: list[InstanceInfo] = []
        self._fetched_at = 0.0
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._local = threading.local()

    def instances(self, force: bool = False) -> list[InstanceInfo]:
        """UP instances, cached ``refresh_seconds`` (the registry is asked at most that often)."""
        with self._lock:
            if force or time.monotonic() - self._fetched_at > self.refresh_seconds:
                try:
                    found = self.registry.instances(self.service)
                except RegistryError:
                    found = self._instances
                self._instances = [i for i in found if i.status == "UP"]
                self._fetched_at = time.monotonic()
            return list(self._instances)

    def _connection(self, instance: InstanceInfo, timeout: float) -> http.client.HTTPConnection:
        connections: dict[str, http.client.HTTPConnection]
        connections = self._local.__dict__.setdefault("connections", {})
        key = f"{instance.host}:{instance.port}"
        connection = connections.get(key)
        if connection is None:
            connection = http.client.HTTPConnection(instance.host, instance.port, timeout=timeout)
            connections[key] = connection
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def _drop(self, instance: InstanceInfo) -> None:
        connections: dict[str, http.client.HTTPConnection] = self._local.__dict__.get("connections", {})
        connection = connections.pop(f"{instance.host}:{instance.port}", None)
        if connection is not None:
            connection.close()

    def invoke(self, function: str, event: Any, timeout: float) -> InvokeResult:
        """Invoke synchronously (``RequestResponse``); raises InvokeUnavailable if no instance answered."""
        body = json.dumps(event, separators=(",", ":")).encode()
        instances = self.instances()
        if not instances:
            instances = self.instances(force=True)
        if not instances:
            raise InvokeUnavailable(f"no UP instance of {self.service} in the registry")
        start = next(self._counter)
        errors = []
        for i in range(len(instances)):
            instance = instances[(start + i) % len(instances)]
            try:
                return self._post(instance, function, body, timeout)
            except (OSError, http.client.HTTPException) as exc:
                self._drop(instance)
                errors.append(f"{instance.instance_id}: {exc}")
        self.instances(force=True)
        raise InvokeUnavailable(f"no instance of {self.service} answered: {'; '.join(errors)}")

    def _post(self, instance: InstanceInfo, function: str, body: bytes, timeout: float) -> InvokeResult:
        path = INVOKE_PATH.format(name=quote(function, safe=""))
        headers = {"Content-Type": "application/json", "X-Amz-Invocation-Type": "RequestResponse"}
        if self.token:
            headers[INVOKE_TOKEN_HEADER] = self.token
        try:
            return self._request(instance, path, body, headers, timeout)
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            # A kept-alive connection the host closed meanwhile: one try on a fresh one.
            self._drop(instance)
            return self._request(instance, path, body, headers, timeout)

    def _request(self, instance: InstanceInfo, path: str, body: bytes, headers: dict[str, str],
                 timeout: float) -> InvokeResult:
        connection = self._connection(instance, timeout)
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        return InvokeResult(response.status, response.getheader("X-Amz-Function-Error"), payload)
