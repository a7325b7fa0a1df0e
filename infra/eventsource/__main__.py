"""``python -m infra.eventsource``: run every Kafka event source of the template until SIGTERM.

Command (the supervisor runs one or more, each with its own ``--instance``)::

    python -m infra.eventsource [--instance NAME] [--template PATH] [--functions A,B]
        [--host 127.0.0.1] [--port 0] [--registry-url URL] [--no-register]

- One poller thread per ``SelfManagedKafka`` / ``MSK`` event (``infra.eventsource.poller``).
- ``--instance`` names this poller in every consumer group (static membership:
  ``group_instance_id = <group>.<instance>``). It must be stable across restarts
  and unique among the pollers running at once (two pollers with one instance
  name fence each other out of the group).
- ``GET /metrics`` (``payfn_consumer_lag``,
  ``kafka_consumer_fetch_manager_records_consumed_total{application="consumer-worker"}``,
  invocations, DLQ counts) and ``GET /health``; registered in the registry as
  ``EVENT-SOURCE-POLLER`` with ``metricsPath`` so Prometheus scrapes it.
- Prints ``LISTENING host:port`` once serving. Exit codes: 0 clean stop, 2 bad template.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import prometheus_client
from kafka import KafkaProducer
from payfn_shared.config import ConfigError, load_dataclass, load_settings
from payfn_shared.registry import RegistryClient, RegistryLease

from infra.eventsource.poller import KafkaPoller, PollerConfig, PollerMetrics
from infra.eventsource.sources import kafka_sources
from infra.net.invoke import ServiceInvoker
from infra.runtime.functions import template_parameters
from infra.serving import StatusServer, add_serving_arguments, announce, instance_for
from infra.template import TEMPLATE_PATH, TemplateError, load_template

log = logging.getLogger("payfn.eventsource")

APP_NAME = "EVENT-SOURCE-POLLER"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m infra.eventsource",
                                     description="Run the template's Kafka event sources locally.")
    parser.add_argument("--instance", default="1",
                        help="stable name of this poller (static group membership); unique per poller")
    parser.add_argument("--template", type=Path, default=TEMPLATE_PATH)
    parser.add_argument("--functions", default="", help="only these logical ids (comma-separated)")
    add_serving_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prometheus_client.disable_created_metrics()
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # kafka-python warns whenever its network thread was starved of CPU for 0.1 s: noise
    # on a small, busy machine, and nothing the poller could act on.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    settings = load_settings()
    try:
        config: PollerConfig = load_dataclass(PollerConfig)
        template = load_template(args.template.resolve(), template_parameters(settings))
        sources = [s for s in kafka_sources(template, settings.kafka_bootstrap) if s.enabled]
    except (TemplateError, ConfigError) as exc:
        log.error("%s", exc)
        return 2
    wanted = {name.strip() for name in args.functions.split(",") if name.strip()}
    if wanted:
        sources = [s for s in sources if s.function in wanted]
    registry = RegistryClient(args.registry_url or settings.registry_url,
                              credentials=settings.registry_credentials)
    invokers: dict[str, ServiceInvoker] = {}
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap.split(","),
                             client_id=f"payfn-poller-dlq-{args.instance}", acks="all",
                             enable_idempotence=True, linger_ms=0)
    metrics = PollerMetrics()
    pollers = [
        KafkaPoller(source, args.instance, invokers.setdefault(source.service, ServiceInvoker(
                        registry, source.service, settings.invoke_token)),
                    producer, metrics, config)
        for source in sources
    ]

    def health() -> dict[str, Any]:
        return {"status": "UP" if all(p.alive for p in pollers) else "DOWN", "instance": args.instance,
                "sources": {p.source.name: {"group": p.source.group_id, "topics": list(p.source.topics),
                                            "alive": p.alive, "batches": p.batches} for p in pollers}}

    server = StatusServer(args.host, args.port, metrics.registry, health)
    server.start()
    announce(args.host, server.port, args.port_file)
    lease = None
    if not args.no_register:
        lease = RegistryLease(registry, instance_for(APP_NAME, args.host, server.port, args.instance,
                                                     {"pollerInstance": args.instance}))
        lease.start()
    for poller in pollers:
        log.info("%s: %s → %s (group %s)", poller.source.name, ",".join(poller.source.topics),
                 poller.source.function, poller.source.group_id)
        poller.start()
    stopped = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stopped.wait()
    log.info("stopping")
    for poller in pollers:
        poller.stop()
    producer.close(timeout=5)
    if lease is not None:
        lease.stop()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
