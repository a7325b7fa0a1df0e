"""The pieces of ``payfn deploy`` and of the deploy-ready template, without services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from payfn_shared.platform.config import ConfigError, load_settings, secrets_provider
from samtranslator.yaml_helper import yaml_parse

from infra.deploy.artifacts import content_hash, zip_folder
from infra.deploy.cloudformation import WAIT_DELAY_SECONDS, create_or_update, failure_reasons, wait_for_stack
from infra.deploy.target import DeployError, DeployTarget, load_target, parse_parameter_overrides
from infra.deploy.transform import expand, leave_out_gaps
from infra.sam.template import TEMPLATE_PATH, load_template


def test_parameter_overrides_parse_like_sam() -> None:
    assert parse_parameter_overrides("A=1 B='x y' C=") == {"A": "1", "B": "x y", "C": ""}
    with pytest.raises(DeployError, match="not NAME=VALUE"):
        parse_parameter_overrides("oops")


def test_local_env_is_samconfig_default_at_the_stack_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYFN_AWS_ENDPOINT_URL", "http://127.0.0.1:5999")
    monkeypatch.setenv("PAYFN_DB_HOST", "db.local")
    target = load_target("local", overrides={"LogLevel": "DEBUG"})
    assert target.endpoint_url == "http://127.0.0.1:5999"
    assert target.stack_name == "payfn-deployed" and target.expand_transform and target.emulator == "moto"
    assert target.create_bucket and target.s3_bucket == "payfn-artifacts"
    assert target.parameters["DbHost"] == "db.local" and target.parameters["LogLevel"] == "DEBUG"
    assert target.explicit == {"LogLevel"}


def test_aws_env_has_no_endpoint_and_resolves_its_bucket() -> None:
    target = load_target("aws")
    assert target.endpoint_url is None and target.resolve_s3 and not target.expand_transform
    assert "DbHost" not in target.parameters, "local addresses never go to AWS"
    assert not load_target("aws", s3_bucket="mine").resolve_s3


def test_unknown_env_names_the_known_ones() -> None:
    with pytest.raises(DeployError, match="known: aws, local, localstack"):
        load_target("staging")


def test_artifact_key_is_a_content_hash_and_the_zip_keeps_bytecode(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"compiled")
    first = content_hash(tmp_path)
    os.utime(tmp_path / "pkg" / "mod.py", (0, 0))
    assert content_hash(tmp_path) == first, "timestamps are not content"
    (tmp_path / "pkg" / "mod.py").write_text("X = 2\n")
    assert content_hash(tmp_path) != first
    with zipfile.ZipFile(BytesIO(zip_folder(tmp_path))) as archive:
        assert archive.namelist() == ["pkg/__pycache__/mod.cpython-311.pyc", "pkg/mod.py"]


def test_moto_gaps_are_left_out_with_what_refers_to_them() -> None:
    template = {
        "Resources": {
            "Fn": {"Type": "AWS::Lambda::Function", "Properties": {}},
            "Kafka": {"Type": "AWS::Lambda::EventSourceMapping",
                      "Properties": {"SelfManagedEventSource": {}, "FunctionName": {"Ref": "Fn"}}},
            "Sqs": {"Type": "AWS::Lambda::EventSourceMapping", "Properties": {"EventSourceArn": "arn:sqs"}},
            "Deployment": {"Type": "AWS::ApiGateway::Deployment", "Properties": {}},
            "Stage": {"Type": "AWS::ApiGateway::Stage", "DependsOn": ["Deployment"], "Properties": {}},
            "Layer": {"Type": "AWS::Lambda::LayerVersion", "Properties": {}},
            "Waiter": {"Type": "AWS::Logs::LogGroup", "DependsOn": "Deployment", "Properties": {}},
        },
        "Outputs": {"StageUrl": {"Value": {"Fn::Sub": "https://x/${Stage}"}},
                    "LayerArn": {"Value": {"Ref": "Layer"}}, "FnName": {"Value": {"Ref": "Fn"}}},
    }
    skipped = leave_out_gaps(template, "moto")
    assert {name for name, _, _ in skipped} == {"Kafka", "Deployment", "Stage", "StageUrl", "LayerArn"}
    assert set(template["Resources"]) == {"Fn", "Sqs", "Layer", "Waiter"}
    assert "DependsOn" not in template["Resources"]["Waiter"]
    assert set(template["Outputs"]) == {"FnName"}
    assert leave_out_gaps({"Resources": {"K": {"Type": "AWS::ApiGateway::Stage"}}}, None) == []


def test_failure_reasons_name_each_failed_resource_once() -> None:
    table = {"LogicalResourceId": "Table", "ResourceType": "AWS::DynamoDB::Table",
             "ResourceStatus": "CREATE_FAILED", "ResourceStatusReason": "Table already exists"}
    events = [
        {**table, "Timestamp": "2026-01-01T00:00:02"},
        {"Timestamp": "2026-01-01T00:00:01", "LogicalResourceId": "Fn",
         "ResourceType": "AWS::Lambda::Function", "ResourceStatus": "CREATE_COMPLETE"},
        {**table, "Timestamp": "2026-01-01T00:00:03"},
    ]
    assert failure_reasons(events) == ["Table (AWS::DynamoDB::Table): Table already exists"]


def _stubbed_cloudformation() -> tuple[Any, Stubber]:
    client = boto3.client("cloudformation", region_name="us-east-1", aws_access_key_id="payfn-local",
                          aws_secret_access_key="payfn-local")
    return client, Stubber(client)


def _described(status: str) -> dict[str, Any]:
    return {"Stacks": [{"StackName": "s", "StackStatus": status, "CreationTime": datetime(2026, 1, 1)}]}


MISSING_STACK = {"service_error_code": "ValidationError", "service_message": "Stack with id s does not exist"}
STUB_TARGET = DeployTarget(env="aws", stack_name="s", region="us-east-1", endpoint_url=None, s3_bucket="b",
                           resolve_s3=False, create_bucket=False, expand_transform=False, emulator=None,
                           capabilities=("CAPABILITY_IAM",))


def test_a_rolled_back_creation_reports_the_failed_resources() -> None:
    """The create waiter stops at ROLLBACK_COMPLETE; the error names the failing events, not the waiter."""
    client, stub = _stubbed_cloudformation()
    stub.add_client_error("describe_stacks", **MISSING_STACK)
    stub.add_response("create_stack", {"StackId": "arn:aws:cloudformation:us-east-1:1:stack/s/1"})
    stub.add_response("describe_stacks", _described("ROLLBACK_COMPLETE"))
    stub.add_response("describe_stacks", _described("ROLLBACK_COMPLETE"))
    stub.add_response("describe_stack_events", {"StackEvents": [
        {"StackId": "1", "EventId": "e", "StackName": "s", "Timestamp": datetime(2026, 1, 1),
         "LogicalResourceId": "Table", "ResourceType": "AWS::DynamoDB::Table",
         "ResourceStatus": "CREATE_FAILED", "ResourceStatusReason": "Table already exists"}]})
    with stub, pytest.raises(DeployError) as failure:
        create_or_update(lambda service: client, STUB_TARGET, {"Resources": {}}, "b")
    assert str(failure.value) == ("stack s ended ROLLBACK_COMPLETE:\n"
                                  "  Table (AWS::DynamoDB::Table): Table already exists")
    stub.assert_no_pending_responses()


def test_a_dead_stack_is_deleted_then_created_through_the_waiters() -> None:
    client, stub = _stubbed_cloudformation()
    stub.add_response("describe_stacks", _described("ROLLBACK_COMPLETE"))
    stub.add_response("delete_stack", {}, {"StackName": "s"})
    stub.add_client_error("describe_stacks", **MISSING_STACK)
    stub.add_response("create_stack", {"StackId": "arn:aws:cloudformation:us-east-1:1:stack/s/2"})
    stub.add_response("describe_stacks", _described("CREATE_COMPLETE"))
    stub.add_response("describe_stacks", _described("CREATE_COMPLETE"))
    with stub:
        status = create_or_update(lambda service: client, STUB_TARGET, {"Resources": {}}, "b")
    assert status == "CREATE_COMPLETE"
    stub.assert_no_pending_responses()


def test_a_stack_still_in_progress_when_the_waiter_gives_up_is_an_error() -> None:
    client, stub = _stubbed_cloudformation()
    stub.add_response("describe_stacks", _described("UPDATE_IN_PROGRESS"))
    stub.add_response("describe_stacks", _described("UPDATE_IN_PROGRESS"))
    with stub, pytest.raises(DeployError, match="stack s still UPDATE_IN_PROGRESS after 2 s"):
        wait_for_stack(client, "s", "stack_update_complete", timeout=WAIT_DELAY_SECONDS)


def test_template_conditions_resolve_locally() -> None:
    plain = load_template().function("AuthorizeFunction")
    assert plain.reserved_concurrency is None and "VpcConfig" not in plain.properties
    tuned = load_template(parameters={"ReservedConcurrency": "5", "SubnetIds": "subnet-1,subnet-2",
                                      "SecurityGroupIds": "sg-1"}).function("AuthorizeFunction")
    assert tuned.reserved_concurrency == 5
    assert tuned.properties["VpcConfig"]["SubnetIds"] == {"Fn::Split": [",", "subnet-1,subnet-2"]}


def test_every_function_has_a_log_group_with_retention() -> None:
    template = load_template()
    groups = {resource["Properties"]["LogGroupName"]["Fn::Sub"]
              for resource in template.resources.values() if resource["Type"] == "AWS::Logs::LogGroup"}
    for spec in template.functions():
        assert f"/aws/lambda/${{{spec.logical_id}}}" in groups, spec.logical_id


@mock_aws
def test_db_password_read_from_secrets_manager() -> None:
    secrets_provider.cache_clear()
    client = boto3.client("secretsmanager", region_name="us-east-1")
    plain = client.create_secret(Name="plain", SecretString="s3cret")["ARN"]
    rds = client.create_secret(Name="rds", SecretString='{"username": "u", "password": "p@ss"}')["ARN"]
    env = {"PAYFN_AWS_ENDPOINT_URL": "", "PAYFN_DB_PASSWORD": "ignored",
           "PAYFN_DB_PASSWORD_SECRET_ARN": plain, "PAYFN_DB_READONLY_PASSWORD_SECRET_ARN": rds,
           "PAYFN_ENV_FILE": "/nonexistent", "PAYFN_CREDENTIALS_FILE": "/nonexistent"}
    settings = load_settings(env)
    assert (settings.db_password, settings.db_readonly_password) == ("s3cret", "p@ss")
    env["PAYFN_DB_PASSWORD_SECRET_ARN"] = plain.replace("plain", "missing")
    with pytest.raises(ConfigError, match="cannot read the database password"):
        load_settings(env)


@mock_aws
def test_db_password_is_cached_per_endpoint_and_region() -> None:
    """Powertools keeps the password for SECRET_MAX_AGE_SECONDS; the client is payfn's endpoint's."""
    secrets_provider.cache_clear()
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = client.create_secret(Name="rotating", SecretString="first")["ARN"]
    env = {"PAYFN_AWS_ENDPOINT_URL": "", "PAYFN_DB_PASSWORD_SECRET_ARN": arn,
           "PAYFN_ENV_FILE": "/nonexistent", "PAYFN_CREDENTIALS_FILE": "/nonexistent"}
    assert load_settings(env).db_password == "first"
    client.put_secret_value(SecretId=arn, SecretString="second")
    assert load_settings(env).db_password == "first", "read again only after SECRET_MAX_AGE_SECONDS"
    provider = secrets_provider("", "eu-west-1")
    assert provider.client.meta.region_name == "eu-west-1", "the region comes from the secret's ARN"
    assert secrets_provider("http://127.0.0.1:5999", "us-east-1").client.meta.endpoint_url == \
        "http://127.0.0.1:5999"


def test_no_secret_no_aws_call() -> None:
    env = {"PAYFN_DB_PASSWORD": "given", "PAYFN_ENV_FILE": "/nonexistent",
           "PAYFN_CREDENTIALS_FILE": "/nonexistent"}
    assert load_settings(env).db_password == "given"


def test_expanded_template_is_cfn_lint_clean(tmp_path: Path) -> None:
    """What ``payfn deploy`` sends to an endpoint without the SAM transform is valid CloudFormation."""
    template = yaml_parse(TEMPLATE_PATH.read_text(encoding="utf-8"))
    for resource in template["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = "s3://payfn-artifacts/code.zip"
    expanded = expand(template, {}, "us-east-1")
    for spec in load_template().functions():
        assert expanded["Resources"][f"{spec.logical_id}Role"]["Type"] == "AWS::IAM::Role"
    path = tmp_path / "expanded.json"
    path.write_text(json.dumps(expanded), encoding="utf-8")
    result = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(path)], capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
