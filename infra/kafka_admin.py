"""Kafka administration over the plain Kafka protocol (works with any broker)."""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from payfn_shared.topics import ALL_TOPICS

logging.getLogger("kafka").setLevel(logging.CRITICAL)


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


def ensure_topics(bootstrap: str, partitions: int, topics: tuple[str, ...] = ALL_TOPICS) -> list[str]:
    """Create the missing topics; returns the ones created (none on a second run)."""
    admin = _admin(bootstrap, 10000)
    try:
        missing = [topic for topic in topics if topic not in set(admin.list_topics())]
        created = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
                created.append(topic)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()
