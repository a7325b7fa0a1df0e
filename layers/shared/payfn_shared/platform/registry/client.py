"""Client of payfn's registry (a Eureka stand-in) over Eureka's REST API.

Every process registers, renews and cancels its instance with it (through
:mod:`.lease`); the gateway, the invokers and tools read the instances back
(through :mod:`.discovery`). It speaks plain Eureka JSON so that the same
code works against a real Eureka server, and it uses only the standard library
because it ships in the Lambda layer, where every dependency costs cold-start time.

Each call opens its own short connection: calls are rare (a renewal every 30 s),
and no shared connection means the client is safe to use from any thread.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

DEFAULT_RENEWAL_INTERVAL = 30
DEFAULT_LEASE_DURATION = 90
DATA_CENTER_CLASS = "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"


class RegistryError(RuntimeError):
    """The registry could not be reached or refused a call (the message says which)."""


@dataclass
class InstanceInfo:
    """One registered instance of a service (``app``) as the registry knows it.

    ``last_renewal`` and ``registration`` are epoch seconds filled in when read back
    from the registry; ``renewal_interval`` and ``lease_duration`` are the lease the
    instance asks for when it registers (Eureka's ``leaseInfo``).
    """

    app: str
    instance_id: str
    host: str
    port: int
    status: str = "UP"
    metadata: dict[str, str] = field(default_factory=dict)
    overridden_status: str = "UNKNOWN"
    renewal_interval: int = DEFAULT_RENEWAL_INTERVAL
    lease_duration: int = DEFAULT_LEASE_DURATION
    last_renewal: float | None = None
    registration: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_eureka(self) -> dict[str, Any]:
        """The instance in Eureka's JSON form (the body of a register call)."""
        return {
            "instanceId": self.instance_id,
            "hostName": self.host,
            "app": self.app.upper(),
            "ipAddr": self.host,
            "status": self.status,
            "overriddenStatus": self.overridden_status,
            "port": {"$": self.port, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"},
            "countryId": 1,
            "dataCenterInfo": {"@class": DATA_CENTER_CLASS, "name": "MyOwn"},
            "leaseInfo": {
                "renewalIntervalInSecs": self.renewal_interval,
                "durationInSecs": self.lease_duration,
            },
            "metadata": dict(self.metadata),
            "homePageUrl": f"{self.base_url}/",
            "statusPageUrl": f"{self.base_url}/health",
            "healthCheckUrl": f"{self.base_url}/health",
            "vipAddress": self.app.lower(),
            "secureVipAddress": self.app.lower(),
            "isCoordinatingDiscoveryServer": "false",
        }

    @classmethod
    def from_eureka(cls, data: Mapping[str, Any]) -> InstanceInfo:
        """Parse one ``instance`` object of Eureka's JSON (tolerant of both port shapes)."""
        port = data.get("port", 0)
        if isinstance(port, Mapping):
            port = port.get("$", 0)
        lease = data.get("leaseInfo") or {}
        metadata = data.get("metadata") or {}
        return cls(
            app=str(data.get("app", "")).upper(),
            instance_id=str(data.get("instanceId") or f"{data.get('hostName')}:{port}"),
            host=str(data.get("hostName") or data.get("ipAddr") or ""),
            port=int(port),
            status=str(data.get("status", "UP")),
            metadata={str(k): str(v) for k, v in metadata.items() if k != "@class"},
            overridden_status=str(data.get("overriddenStatus") or data.get("overriddenstatus") or "UNKNOWN"),
            renewal_interval=int(lease.get("renewalIntervalInSecs", DEFAULT_RENEWAL_INTERVAL)),
            lease_duration=int(lease.get("durationInSecs", DEFAULT_LEASE_DURATION)),
            last_renewal=_millis_to_seconds(lease.get("lastRenewalTimestamp")),
            registration=_millis_to_seconds(lease.get("registrationTimestamp")),
        )


def _millis_to_seconds(value: Any) -> float | None:
    if value in (None, "", 0, "0"):
        return None
    return int(value) / 1000.0


def _as_list(value: Any) -> list[Any]:
    """Eureka (Jackson) writes a one-element array as a bare object; accept both."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


class RegistryClient:
    """Blocking Eureka REST client with a per-call timeout.

    ``base_url`` is the registry's address, with or without Eureka's ``/eureka``
    context path (``http://127.0.0.1:8761`` and ``http://127.0.0.1:8761/eureka``
    both work), so it takes ``Settings.registry_url`` as it is. Writes carry HTTP
    Basic ``credentials`` (or the URL's ``user:password@``, as Eureka clients take them).
    """

    def __init__(self, base_url: str, timeout: float = 1.0,
                 credentials: tuple[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"registry URL {base_url!r} is not an http(s) URL")
        if credentials is None and parts.username is not None:
            credentials = (unquote(parts.username), unquote(parts.password or ""))
        self._authorization = None if credentials is None else "Basic " + base64.b64encode(
            f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        path = parts.path.rstrip("/")
        self._prefix = path if path.endswith("/eureka") else f"{path}/eureka"
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, bytes]:
        connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = connection_class(self._host, self._port, timeout=self.timeout)
        headers = {"Accept": "application/json"}
        if self._authorization is not None and method != "GET":
            headers["Authorization"] = self._authorization
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self._prefix + path, body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryError(f"registry {method} {path}: {exc}") from exc
        finally:
            connection.close()

    @staticmethod
    def _check(method: str, path: str, status: int, data: bytes) -> None:
        if not 200 <= status < 300:
            raise RegistryError(f"registry {method} {path}: HTTP {status} {data[:200]!r}")

    def register(self, instance: InstanceInfo) -> None:
        """Register (or re-register) an instance; its lease starts now."""
        path = f"/apps/{quote(instance.app.upper())}"
        status, data = self._request("POST", path, {"instance": instance.to_eureka()})
        self._check("POST", path, status, data)

    def renew(self, app: str, instance_id: str) -> bool:
        """Heartbeat. False when the registry no longer knows the instance (re-register then)."""
        path = f"/apps/{quote(app.upper())}/{quote(instance_id, safe='')}"
        status, data = self._request("PUT", path)
        if status == 404:
            return False
        self._check("PUT", path, status, data)
        return True

    def cancel(self, app: str, instance_id: str) -> None:
        """Deregister on a clean stop; an instance already gone is not an error."""
        path = f"/apps/{quote(app.upper())}/{quote(instance_id, safe='')}"
        status, data = self._request("DELETE", path)
        if status != 404:
            self._check("DELETE", path, status, data)

    def instances(self, app: str) -> list[InstanceInfo]:
        """Every live instance of ``app`` whatever its status (UP, DOWN, …); [] if none."""
        path = f"/apps/{quote(app.upper())}"
        status, data = self._request("GET", path)
        if status == 404:
            return []
        self._check("GET", path, status, data)
        application = json.loads(data).get("application") or {}
        return [InstanceInfo.from_eureka(item) for item in _as_list(application.get("instance"))]

    def apps(self) -> dict[str, list[InstanceInfo]]:
        """All applications and their live instances."""
        status, data = self._request("GET", "/apps")
        self._check("GET", "/apps", status, data)
        return parse_applications(json.loads(data))


def parse_applications(document: Mapping[str, Any]) -> dict[str, list[InstanceInfo]]:
    """Eureka's ``{"applications": …}`` JSON → app name → instances."""
    applications = document.get("applications") or {}
    result: dict[str, list[InstanceInfo]] = {}
    for application in _as_list(applications.get("application")):
        instances = [InstanceInfo.from_eureka(item) for item in _as_list(application.get("instance"))]
        result[str(application.get("name", "")).upper()] = instances
    return result
