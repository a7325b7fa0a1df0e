"""``python -m gateway [--host H] [--port P]``: run the edge until SIGTERM/SIGINT.

Prints ``LISTENING http://host:port`` once it accepts connections (``--port 0``
picks a free port, which is how tests start private gateways).
"""

from __future__ import annotations

import argparse
import gc
import logging
import socket
import sys
from pathlib import Path

import uvloop
from payfn_shared.platform.config import ConfigError, load_dataclass, load_settings
from payfn_shared.platform.registry import Discovery, InstanceInfo, RegistryClient, RegistryLease

from gateway.api_map import ApiMap
from gateway.app import AccessLog, Gateway
from gateway.config import GatewayConfig
from gateway.spring_routes import ROUTES_PATH, RoutingConfigError, load_routes
from infra.net.serving import serve_until_signal
from infra.sam.template import TEMPLATE_PATH, TemplateError, load_template

log = logging.getLogger("payfn.gateway")
SERVICE_NAME = "API-GATEWAY"
#: Timeout of the directory's registry fetches (seconds; they run on a thread, never on the loop).
REGISTRY_FETCH_TIMEOUT = 2.0
#: Listening on every interface: register the loopback address, which is reachable from here.
WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - compared with, never bound


def build_directory(registry_url: str, config: GatewayConfig) -> Discovery:
    """The gateway's view of the registry (reads need no credentials)."""
    return Discovery(RegistryClient(registry_url, timeout=REGISTRY_FETCH_TIMEOUT),
                     config.gateway_probe_interval, config.gateway_connect_timeout)


def build_gateway(template: Path, routes: Path, registry_url: str, config: GatewayConfig,
                  invoke_token: str = "") -> Gateway:
    """Everything but the listening socket, so tests can build one in process."""
    directory = build_directory(registry_url, config)
    return Gateway(load_routes(routes), ApiMap.from_template(load_template(template)), directory, config,
                   AccessLog(), template, invoke_token=invoke_token)


async def run(args: argparse.Namespace) -> None:
    settings = load_settings()
    config: GatewayConfig = load_dataclass(GatewayConfig)
    registry_url = args.registry_url or settings.registry_url
    gateway = build_gateway(args.template, args.routes, registry_url, config, settings.invoke_token)
    port = await gateway.serve(args.host, args.port)
    # Everything allocated so far lives as long as the process: keep it out of the
    # collector's scans, so collections under load stay short (they show in p99).
    gc.freeze()
    # Scrapes render on a thread (see Gateway): the loop thread waits at most this long
    # for the GIL when it wakes during a render (CPython's default is 5 ms).
    sys.setswitchinterval(0.001)
    sys.stdout.write(f"LISTENING http://{args.host}:{port}\n")
    sys.stdout.flush()
    log.info("gateway on %s:%s, routes %s", args.host, port, ", ".join(r.id for r in gateway.routes))
    lease = None
    if config.gateway_register and not args.no_register:
        advertise = "127.0.0.1" if args.host in WILDCARDS else args.host
        instance = InstanceInfo(SERVICE_NAME, f"{socket.gethostname()}:api-gateway:{port}", advertise, port,
                                metadata={"metricsPath": "/actuator/prometheus", "application": "gateway"})
        client = RegistryClient(registry_url, credentials=settings.registry_credentials)
        lease = RegistryLease(client, instance, config.gateway_renew_seconds)
        lease.start()
    await serve_until_signal(lease, gateway.close, log)


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default=settings.gateway_host)
    parser.add_argument("--port", type=int, default=settings.gateway_port)
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    parser.add_argument("--routes", type=Path, default=ROUTES_PATH)
    parser.add_argument("--registry-url", default="", help="default: PAYFN_REGISTRY_HOST/PORT")
    parser.add_argument("--no-register", action="store_true", help=f"do not register as {SERVICE_NAME}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        uvloop.run(run(args))
    except (ConfigError, RoutingConfigError, TemplateError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
