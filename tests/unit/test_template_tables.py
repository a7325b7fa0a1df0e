"""The stack creates DynamoDB tables from the template's own resource definitions."""

from __future__ import annotations

import boto3
from moto import mock_aws
from payfn_shared.platform.config import Settings

from infra.sam.template import load_template
from infra.stack.aws import create_table_request, ensure_tables


def test_registry_table_declared_with_ttl() -> None:
    tables = {t.logical_id: t for t in load_template().tables()}
    registry = tables["RegistryTable"]
    assert registry.name == Settings().registry_table
    assert registry.properties["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    request = create_table_request(registry)
    assert {k["AttributeName"] for k in request["KeySchema"]} == {"app", "instanceId"}


@mock_aws
def test_ensure_tables_creates_each_once_with_ttl() -> None:
    settings = Settings(aws_endpoint_url="")
    tables = load_template().tables()
    assert ensure_tables(settings, tables) == [t.name for t in tables]
    assert ensure_tables(settings, tables) == []
    client = boto3.client("dynamodb", region_name="us-east-1")
    for table in tables:
        ttl = client.describe_time_to_live(TableName=table.name)["TimeToLiveDescription"]
        assert ttl["TimeToLiveStatus"] == "ENABLED"


def test_globals_and_parameters_resolved_for_functions() -> None:
    template = load_template(parameters={"DbHost": "db.internal"})
    ping = template.function("PingFunction")
    assert ping.environment["PAYFN_DB_HOST"] == "db.internal"
    assert ping.environment["PAYFN_REGISTRY_TABLE"] == "payfn-registry"
    assert ping.service == "INGEST-SERVICE"
    assert ping.timeout == 3.0 and ping.memory_size == 256
