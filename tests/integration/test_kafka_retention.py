"""Topic retention against the live broker: set at creation, brought in line afterwards.

Retention is what keeps a long-lived local broker small (see ``KafkaBroker.provision``),
so these tests check what the broker reports, not what was sent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
from payfn_shared.platform.config import load_settings

from infra.stack.kafka_admin import RETENTION_MS, _align_configs, ensure_topics


@pytest.fixture
def bootstrap() -> str:
    return load_settings().kafka_bootstrap


@pytest.fixture
def admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "client.id": "payfn-test-retention"})


@pytest.fixture
def topic(admin: AdminClient) -> Iterator[str]:
    """A topic name of this test's own, deleted afterwards if the test created it."""
    name = f"test.retention.{uuid.uuid4().hex[:10]}"
    yield name
    if name in admin.list_topics(timeout=10).topics:
        admin.delete_topics([name], request_timeout=10)[name].result()


def retention_of(admin: AdminClient, topic: str) -> str | None:
    """The broker's effective ``retention.ms`` of ``topic`` (default or set)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    (future,) = admin.describe_configs([resource], request_timeout=10).values()
    entry = future.result().get(RETENTION_MS)
    return None if entry is None else entry.value


def test_new_topics_get_the_retention_and_existing_ones_are_altered_to_it(
    bootstrap: str, admin: AdminClient, topic: str,
) -> None:
    assert ensure_topics(bootstrap, 1, (topic,), retention_ms=60_000) == [topic]
    assert retention_of(admin, topic) == "60000"

    assert ensure_topics(bootstrap, 1, (topic,), retention_ms=120_000, alter_existing=False) == []
    assert retention_of(admin, topic) == "60000"

    assert ensure_topics(bootstrap, 1, (topic,), retention_ms=120_000) == []
    assert retention_of(admin, topic) == "120000"


def test_a_refused_alteration_is_one_warning_not_an_error(
    admin: AdminClient, caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker refuses altering topics it does not have; start-up must go on regardless."""
    missing = [f"test.retention.missing.{uuid.uuid4().hex[:10]}" for _ in range(2)]
    with caplog.at_level(logging.WARNING, logger="infra.stack.kafka_admin"):
        _align_configs(admin, missing, {RETENTION_MS: "60000"})
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert all(name in warnings[0].getMessage() for name in missing)
