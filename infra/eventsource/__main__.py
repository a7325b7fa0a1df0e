"""``python -m infra.eventsource``: run every Kafka event source of the template until SIGTERM.

The supervisor runs one or more, each with its own ``--instance``: one poller thread
per ``SelfManagedKafka`` / ``MSK`` event (``infra.eventsource.poller``). ``--instance``
names this poller in every consumer group (static membership), so it must be stable
across restarts and unique among the pollers running at once. Serves ``/metrics`` and
``/health`` and registers as ``EVENT-SOURCE-POLLER``. Prints ``LISTENING host:port``
once serving. Exit codes: 0 clean stop, 2 bad template.

Command line and metrics: docs/EVENTS.md#infraeventsource__main__
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from kafka import KafkaProducer
from payfn_shared.platform.config import Settings, load_dataclass
from payfn_shared.platform.registry import RegistryClient

from infra.eventsource.poller import KafkaPoller, PollerConfig, PollerMetrics
from infra.eventsource.sources import kafka_sources
from infra.net.invoke import ServiceInvoker
from infra.net.serving import BackgroundWork, background_main, background_parser
from infra.runtime.functions import template_parameters
from infra.sam.template import load_template

log = logging.getLogger("payfn.eventsource")

APP_NAME = "EVENT-SOURCE-POLLER"


def build_pollers(args: argparse.Namespace, settings: Settings, registry: RegistryClient) -> BackgroundWork:
    """One poller per enabled Kafka event source (only those of ``--functions`` when given)."""
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # kafka-python warns whenever its network thread was starved of CPU for 0.1 s: noise
    # on a small, busy machine, and nothing the poller could act on.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    config: PollerConfig = load_dataclass(PollerConfig)
    template = load_template(args.template.resolve(), template_parameters(settings))
    sources = [s for s in kafka_sources(template, settings.kafka_bootstrap) if s.enabled]
    if args.functions:
        sources = [s for s in sources if s.function in args.functions]
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

    def start() -> None:
        for poller in pollers:
            log.info("%s: %s → %s (group %s)", poller.source.name, ",".join(poller.source.topics),
                     poller.source.function, poller.source.group_id)
            poller.start()

    def stop() -> None:
        for poller in pollers:
            poller.stop()
        producer.close(timeout=5)

    return BackgroundWork(metrics.registry, health, start, stop, args.instance,
                          {"pollerInstance": args.instance})


def main(argv: list[str] | None = None) -> int:
    parser = background_parser("python -m infra.eventsource",
                               "Run the template's Kafka event sources locally.")
    parser.add_argument("--instance", default="1",
                        help="stable name of this poller (static group membership); unique per poller")
    return background_main(parser, APP_NAME, build_pollers, argv)


if __name__ == "__main__":
    sys.exit(main())
