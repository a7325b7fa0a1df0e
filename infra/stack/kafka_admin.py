"""Kafka administration over the plain Kafka protocol (works with any broker)."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from payfn_shared.payments.topics import ALL_TOPICS

logging.getLogger("kafka").setLevel(logging.CRITICAL)
log = logging.getLogger(__name__)

RETENTION_MS = "retention.ms"


def _admin(bootstrap: str, timeout_ms: int = 2000) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","), client_id="payfn-admin",
        request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
    )


def broker_ready(bootstrap: str) -> bool:
    """A metadata round trip: the broker answers the Kafka protocol."""
    try:
        admin = _admin(bootstrap, 1500)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def ensure_topics(bootstrap: str, partitions: int, topics: tuple[str, ...] = ALL_TOPICS, *,
                  retention_ms: int | None = None, alter_existing: bool = True) -> list[str]:
    """Create the missing topics; returns the ones created (none on a second run).

    With ``retention_ms``, new topics get it as ``retention.ms`` and, unless
    ``alter_existing`` is false, existing topics of ``topics`` whose retention differs
    are altered to it: topics created before the retention existed would otherwise
    keep every record forever. A broker that refuses the change costs a warning, not
    the caller's start-up.
    """
    configs = {} if retention_ms is None else {RETENTION_MS: str(retention_ms)}
    admin = _admin(bootstrap, 10000)
    try:
        existing = set(admin.list_topics())
        created = []
        for topic in topics:
            if topic in existing:
                continue
            try:
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                              topic_configs=configs)])
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
        if configs and alter_existing:
            _align_configs(admin, [topic for topic in topics if topic not in created], configs)
        return created
    finally:
        admin.close()


def _align_configs(admin: KafkaAdminClient, topics: list[str], configs: dict[str, str]) -> None:
    """Set ``configs`` on the ``topics`` whose effective values differ; one warning if refused.

    ``config_filter="all"`` because the default ("modified") hides a value the broker
    holds as its default, which would make an already matching topic look different.
    Per-topic refusals come back as result strings, not exceptions, so both are checked.
    """
    if not topics:
        return
    stale: list[str] = []
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs=list(configs)) for topic in topics],
            config_filter="all",
        ).get("topic", {})
        stale = [topic for topic in topics
                 if any(described.get(topic, {}).get(key, {}).get("value") != value
                        for key, value in configs.items())]
        if not stale:
            return
        results = admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs=dict(configs)) for topic in stale],
            raise_on_unknown=False,
        ).get("topic", {})
        refused = {topic: results.get(topic, "no answer") for topic in stale if results.get(topic) != "OK"}
    except (KafkaError, OSError) as error:
        refused = {topic: f"{type(error).__name__}: {error}" for topic in stale or topics}
    if refused:
        log.warning("the Kafka broker did not apply %s to existing topics (they keep their settings): %s",
                    configs, "; ".join(f"{topic}: {reason}" for topic, reason in refused.items()))
