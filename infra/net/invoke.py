"""Invoking a function the way AWS's event sources do: Lambda's Invoke API on a live instance.

The scheduler and the Kafka event-source poller find the function's service in
the registry, pick an UP instance round-robin and ``POST
/2015-03-31/functions/{name}/invocations`` on it, through the one
:class:`~payfn_shared.platform.registry.Discovery` the gateway uses too. An instance that
refuses the connection or drops it is quarantined and the next one tried (the
registry may lag a dead host by a lease); only when none answers does the caller see
:class:`InvokeUnavailable`, which means "nothing ran, try again later", never "the
function failed".
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from payfn_shared.platform.registry import DiscoveredInstance, Discovery, RegistryClient

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
    """Round-robin invoker over the registry's UP instances of one service, with quarantine."""

    def __init__(self, registry: RegistryClient, service: str, token: str = "",
                 refresh_seconds: float = 2.0) -> None:
        self.discovery = Discovery(registry)
        self.service = service
        self.token = token
        self.refresh_seconds = refresh_seconds
        self._local = threading.local()

    def _connection(self, instance: DiscoveredInstance, timeout: float) -> http.client.HTTPConnection:
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

    def _drop(self, instance: DiscoveredInstance) -> None:
        connections: dict[str, http.client.HTTPConnection] = self._local.__dict__.get("connections", {})
        connection = connections.pop(f"{instance.host}:{instance.port}", None)
        if connection is not None:
            connection.close()

    def invoke(self, function: str, event: Any, timeout: float) -> InvokeResult:
        """Invoke synchronously (``RequestResponse``); raises InvokeUnavailable if no instance answered.

        The copy of the registry is refreshed when older than ``refresh_seconds``. A
        refused or dropped connection quarantines the instance; a timeout does not.
        """
        body = json.dumps(event, separators=(",", ":")).encode()
        self.discovery.refresh_if_older(self.refresh_seconds)
        tried: set[str] = set()
        errors = []
        while (instance := self.discovery.pick_or_refresh(self.service, tried)) is not None:
            if instance.instance_id in tried:
                break
            tried.add(instance.instance_id)
            try:
                return self._post(instance, function, body, timeout)
            except ConnectionRefusedError as exc:
                self.discovery.suspend(instance, "refused the connection")
                errors.append(f"{instance.instance_id}: {exc}")
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
                self.discovery.suspend(instance, "dropped a connection it had a request on")
                errors.append(f"{instance.instance_id}: {exc}")
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{instance.instance_id}: {exc}")
            self._drop(instance)
        if not tried:
            raise InvokeUnavailable(f"no usable UP instance of {self.service} in the registry "
                                    f"(quarantined: {self.discovery.quarantined()})")
        self.discovery.refresh()
        raise InvokeUnavailable(f"no instance of {self.service} answered: {'; '.join(errors)}")

    def _post(self, instance: DiscoveredInstance, function: str, body: bytes, timeout: float) -> InvokeResult:
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

    def _request(self, instance: DiscoveredInstance, path: str, body: bytes, headers: dict[str, str],
                 timeout: float) -> InvokeResult:
        connection = self._connection(instance, timeout)
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        return InvokeResult(response.status, response.getheader("X-Amz-Function-Error"), payload)
