"""The AWS emulator side of the stack: clients and the template's tables."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from payfn_shared.platform.config import Settings

from infra.sam.template import TableSpec

#: CloudFormation table properties that CreateTable takes unchanged.
_CREATE_TABLE_KEYS = ("AttributeDefinitions", "KeySchema", "BillingMode", "GlobalSecondaryIndexes",
                      "LocalSecondaryIndexes", "ProvisionedThroughput", "StreamSpecification")


def dynamodb_client(settings: Settings, timeout: float = 5.0) -> Any:
    """A DynamoDB client for the configured endpoint (the local emulator by default)."""
    return boto3.client(
        "dynamodb", endpoint_url=settings.aws_endpoint_url or None, region_name=settings.aws_region,
        aws_access_key_id="payfn-local", aws_secret_access_key="payfn-local",  # noqa: S106 - emulator only
        config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}),
    )


def create_table_request(table: TableSpec) -> dict[str, Any]:
    """CreateTable parameters straight from the template's resource definition."""
    request = {key: table.properties[key] for key in _CREATE_TABLE_KEYS if key in table.properties}
    request["TableName"] = table.name
    return request


def ensure_tables(settings: Settings, tables: list[TableSpec]) -> list[str]:
    """Create the template's tables that are missing (with their TTL); returns those created."""
    client = dynamodb_client(settings)
    existing = set(client.list_tables()["TableNames"])
    created = []
    for table in tables:
        if table.name in existing:
            continue
        client.create_table(**create_table_request(table))
        ttl = table.properties.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            client.update_time_to_live(
                TableName=table.name,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        created.append(table.name)
    return created
