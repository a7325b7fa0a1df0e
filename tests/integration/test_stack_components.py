"""Each component of the stack, proved through its own protocol."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pymysql
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from payfn_shared.payments.topics import ALL_TOPICS
from payfn_shared.platform.config import Settings

from infra.stack.components import KafkaBroker
from infra.stack.kafka_admin import ensure_topics, read_back_consumer, read_to_end
from infra.stack.process import free_port
from infra.stack.schema import discover
from infra.stack.supervisor import Supervisor


def test_sql_round_trip(db: pymysql.connections.Connection) -> None:
    with db.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE roundtrip (id INT PRIMARY KEY, note VARCHAR(20))")
        cursor.execute("INSERT INTO roundtrip VALUES (%s, %s)", (1, "payfn"))
        cursor.execute("SELECT note FROM roundtrip WHERE id = %s", (1,))
        assert cursor.fetchone() == ("payfn",)


def test_every_migration_file_applied_once(db: pymysql.connections.Connection) -> None:
    with db.cursor() as cursor:
        cursor.execute("SELECT version, checksum FROM schema_migrations ORDER BY version")
        recorded = list(cursor.fetchall())
    assert recorded == [(m.version, m.checksum) for m in discover()]


def test_readonly_user_cannot_write(settings: Settings) -> None:
    reader = pymysql.connect(host=settings.db_host, port=settings.db_port, user=settings.db_readonly_user,
                             password=settings.db_readonly_password, database=settings.db_name)
    with reader, reader.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM schema_migrations")
        assert cursor.fetchone()[0] == len(discover())
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cursor.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (99999, 'x', 'x')")
        assert refused.value.args[0] == 1142  # INSERT command denied
        with pytest.raises(pymysql.err.OperationalError):
            cursor.execute("CREATE TABLE sneaky (id INT)")


def test_redis_set_get(redis_client) -> None:
    key = f"payfn:test:{uuid.uuid4()}"
    redis_client.set(key, "value", ex=30)
    assert redis_client.get(key) == b"value"


def test_payment_topics_exist(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    assert set(ALL_TOPICS) <= set(admin.list_topics(timeout=10).topics)


def test_kafka_produce_consume_in_group_with_commit(settings: Settings) -> None:
    topic, group = f"test.stack.{uuid.uuid4().hex[:8]}", f"test-group-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True,
                         "acks": "all"})
    for i in range(5):
        producer.produce(topic, key=b"k", value=f"m{i}".encode(), headers=[("eventId", str(i).encode())])
    producer.flush(10)

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group,
                         "group.instance.id": f"{group}-1", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    received = []
    deadline = time.monotonic() + 20
    while len(received) < 5 and time.monotonic() < deadline:
        received.extend(message for message in consumer.consume(5, 0.5) if message.error() is None)
    consumer.commit(asynchronous=False)
    (committed,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
    consumer.close()
    assert [r.value() for r in received] == [f"m{i}".encode() for i in range(5)]
    assert received[0].headers() == [("eventId", b"0")]
    assert committed.offset == 5


def test_dynamodb_registry_table_put_get(settings: Settings) -> None:
    table = boto3.resource(
        "dynamodb", endpoint_url=settings.aws_endpoint_url, region_name=settings.aws_region,
        aws_access_key_id="test", aws_secret_access_key="test",
    ).Table(settings.registry_table)
    item = {"app": "TEST-SERVICE", "instanceId": str(uuid.uuid4()), "port": 1234}
    table.put_item(Item=item)
    stored = table.get_item(Key={"app": item["app"], "instanceId": item["instanceId"]})["Item"]
    assert stored["port"] == 1234
    table.delete_item(Key={"app": item["app"], "instanceId": item["instanceId"]})


def test_prometheus_ready_and_queryable(settings: Settings) -> None:
    with urllib.request.urlopen(f"{settings.prometheus_url}/-/ready", timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{settings.prometheus_url}/api/v1/query?query=up", timeout=5) as response:
        assert json.load(response)["status"] == "success"


def test_stopping_the_broker_keeps_every_acknowledged_record(settings: Settings, tmp_path: Path) -> None:
    """Regression: SIGTERM alone made noida-db lose records it acknowledged just before
    exiting (an outbox row marked published whose event never reached a consumer).
    The supervisor's stop must keep every record a producer got an ack for."""
    private = replace(settings, stack_dir=str(tmp_path), kafka_bootstrap=f"127.0.0.1:{free_port()}")
    supervisor = Supervisor(private, components=[KafkaBroker])
    supervisor.up()
    try:
        ensure_topics(private.kafka_bootstrap, 3, ("test.stop",))
        acked: list[bytes] = []
        producer = Producer({"bootstrap.servers": private.kafka_bootstrap, "acks": "all",
                             "enable.idempotence": True, "linger.ms": 0, "message.timeout.ms": 1500})
        stop = threading.Event()

        def produce() -> None:
            def report(error: object, message: Any) -> None:
                if error is None:
                    acked.append(message.value())

            while not stop.is_set():
                producer.produce("test.stop", value=uuid.uuid4().hex.encode(), on_delivery=report)
                producer.poll(0.002)

        writer = threading.Thread(target=produce)
        writer.start()
        deadline = time.monotonic() + 30
        while len(acked) < 300:
            assert time.monotonic() < deadline, "the broker acknowledged too little before the stop"
            time.sleep(0.05)
        supervisor.down(["kafka"])  # while records keep coming
        time.sleep(1)
        stop.set()
        writer.join()
        producer.flush(3)
        supervisor.up()
        stored = read_topic(private.kafka_bootstrap, "test.stop", 3)
        lost = [value for value in acked if value not in stored]
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged records lost by the stop"
    finally:
        supervisor.down()


def read_topic(bootstrap: str, topic: str, partitions: int) -> set[bytes]:
    consumer = read_back_consumer(bootstrap)
    seen: set[bytes] = set()
    try:
        complete = read_to_end(consumer, [(topic, p) for p in range(partitions)], 30,
                               lambda record: seen.add(record.value or b""))
    finally:
        consumer.close()
    assert complete, "could not read the topic back"
    return seen
