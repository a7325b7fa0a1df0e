"""payfn's own processes in the stack: the registry, one function host per service
instance, the scheduler, the Kafka event-source poller and the gateway — all read
from ``template.yaml``.

Function hosts listen on ephemeral ports (like Lambda, nobody addresses them
directly): each writes its address to a port file, registers itself in the
registry, and the gateway finds it there. Which functions a host runs is the
template's ``payfn:service`` tag; how many hosts run per service is the scale
(``payfn up --scale INGEST-SERVICE=2``), remembered in ``.stack/scale.json`` so
that ``status`` and ``down`` see the same set.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from payfn_shared.platform.config import Settings

from infra.runtime.functions import API_EVENT_TYPES
from infra.sam.template import Template
from infra.stack.component import Component, StackError, StackPaths, http_ok
from infra.stack.components import INFRASTRUCTURE

ComponentFactory = Callable[[Settings, StackPaths, Template], Component]


class RegistryService(Component):
    """The Eureka stand-in over the DynamoDB registry table."""

    name = "registry"
    title = "Registry (Eureka API)"
    port_variable = "PAYFN_REGISTRY_PORT"

    @property
    def host(self) -> str:
        return self.settings.registry_host

    @property
    def port(self) -> int:
        return self.settings.registry_port

    def command(self) -> list[str]:
        return [sys.executable, "-m", "infra.registry", "--host", self.host, "--port", str(self.port)]

    def healthy(self) -> bool:
        return http_ok(f"{self.settings.registry_url}/health")

    def url(self) -> str:
        return f"{self.settings.registry_url}/"


class GatewayService(Component):
    """The API Gateway emulation: the edge every client talks to."""

    name = "gateway"
    title = "API gateway"
    port_variable = "PAYFN_GATEWAY_PORT"

    @property
    def host(self) -> str:
        return self.settings.gateway_host

    @property
    def port(self) -> int:
        return self.settings.gateway_port

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway", "--host", self.host, "--port", str(self.port)]

    def healthy(self) -> bool:
        return http_ok(f"{self.settings.gateway_url}/actuator/health")

    def url(self) -> str:
        return f"{self.settings.gateway_url}/"


class PortFileComponent(Component):
    """A process on an ephemeral port that reports its address in a port file.

    Nobody addresses these processes by a configured port: they register in the
    registry (or are reached through it), so there is nothing to collide with.
    """

    port_variable = ""
    fixed_port = False

    @property
    def port_file(self) -> Path:
        return self.paths.run / f"{self.name}.port"

    def _address(self) -> tuple[str, int] | None:
        try:
            host, _, port = self.port_file.read_text(encoding="utf-8").strip().rpartition(":")
            return host, int(port)
        except (FileNotFoundError, ValueError):
            return None

    @property
    def host(self) -> str:
        address = self._address()
        return address[0] if address else self.settings.bind_host

    @property
    def port(self) -> int:
        address = self._address()
        return address[1] if address else 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}" if self._address() else "(ephemeral)"

    def prepare(self) -> None:
        self.port_file.unlink(missing_ok=True)

    def listen_arguments(self) -> list[str]:
        return ["--host", self.settings.bind_host, "--port", "0", "--port-file", str(self.port_file)]

    def healthy(self) -> bool:
        return self._address() is not None and http_ok(f"http://{self.host}:{self.port}/health")


class FunctionHostService(PortFileComponent):
    """One instance of a service: a Lambda runtime emulation host for its functions."""

    def __init__(self, settings: Settings, paths: StackPaths, template: Template, *, service: str,
                 index: int) -> None:
        super().__init__(settings, paths, template)
        self.service = service
        self.name = f"{service.lower()}-{index}"
        self.title = f"{service} host #{index}"

    @property
    def background(self) -> bool:  # type: ignore[override]
        """A service none of whose functions serves an API route (consumers, the relay)."""
        return not any(event.type in API_EVENT_TYPES for function in self.template.functions()
                       if function.service == self.service for event in function.events)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "infra.runtime.host", "--service", self.service,
                *self.listen_arguments()]


class SchedulerService(PortFileComponent):
    """Runs the template's ``Schedule`` events (the outbox relay) like EventBridge would."""

    name = "scheduler"
    title = "Scheduler (EventBridge rules)"
    background = True

    def command(self) -> list[str]:
        return [sys.executable, "-m", "infra.eventsource.scheduler", *self.listen_arguments()]


class EventSourcePollerService(PortFileComponent):
    """Runs the template's Kafka event sources like Lambda's event-source mapping would."""

    name = "eventsource"
    title = "Kafka event-source poller"
    background = True

    def command(self) -> list[str]:
        # A stable instance name keeps the consumer group's static membership across restarts.
        return [sys.executable, "-m", "infra.eventsource", "--instance", "local-1", *self.listen_arguments()]


def template_services(template: Template) -> list[str]:
    """Every service named by a function's ``payfn:service`` tag, in template order."""
    services: list[str] = []
    for function in template.functions():
        if function.service and function.service not in services:
            services.append(function.service)
    return services


_SCALE_PATTERN = re.compile(r"^([A-Z0-9-]+)=(\d+)$")


def parse_scale(values: list[str], known: list[str]) -> dict[str, int]:
    """``["INGEST-SERVICE=2"]`` → ``{"INGEST-SERVICE": 2}``, checked against the template."""
    scale: dict[str, int] = {}
    for value in values:
        match = _SCALE_PATTERN.match(value.strip().upper())
        if match is None:
            raise StackError(f"--scale {value!r}: expected SERVICE=N, e.g. INGEST-SERVICE=2")
        service, count = match.group(1), int(match.group(2))
        if service not in known:
            names = ", ".join(known)
            raise StackError(f"--scale {value!r}: no service {service} in template.yaml (known: {names})")
        if not 1 <= count <= 16:
            raise StackError(f"--scale {value!r}: between 1 and 16 instances")
        scale[service] = count
    return scale


class ScaleFile:
    """How many hosts run per service, remembered between ``up``, ``status`` and ``down``."""

    def __init__(self, paths: StackPaths) -> None:
        self.path = paths.root / "scale.json"

    def read(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads(self.path.read_text(encoding="utf-8")).items()}
        except (FileNotFoundError, ValueError):
            return {}

    def write(self, scale: Mapping[str, int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(dict(scale), indent=2, sort_keys=True), encoding="utf-8")


def stack_components(template: Template, scale: Mapping[str, int]) -> list[ComponentFactory]:
    """The whole stack in start order: infrastructure, registry, hosts, event sources, gateway."""
    factories: list[ComponentFactory] = [*INFRASTRUCTURE, RegistryService]
    for service in template_services(template):
        for index in range(1, scale.get(service, 1) + 1):
            factories.append(partial(FunctionHostService, service=service, index=index))
    factories += [SchedulerService, EventSourcePollerService, GatewayService]
    return factories
