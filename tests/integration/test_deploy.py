"""``payfn deploy --env local``: the template, expanded and deployed to a moto server.

Each module run starts its own moto server on a free port, so the CloudFormation
stack never meets the registry table the running stack keeps in the shared moto.
The deployment reads the database password from a Secrets Manager secret in that
moto (``DbPasswordSecretArn``, ``DbPassword`` empty), so the secret path runs end to end.

What moto 5.2 does not emulate (so it is listed here, not checked):
- self-managed Kafka event source mappings (left out by ``payfn deploy``);
- the REST API's OpenAPI body: no methods, so no Deployment/Stage (left out);
- ``Ref`` of a layer version is not its ARN: functions are created without their layer
  (the layer itself is published) and the ``SharedLayerArn`` output is left out;
- a table's ``TimeToLiveSpecification`` (the table is created, TTL stays disabled);
- running Lambda code (moto needs Docker for it): the deployed function is run by
  payfn's own runtime from its deployed configuration and code instead.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from payfn_shared.platform.config import Settings, load_settings

from infra.sam.template import REPO_ROOT, load_template
from tests.apigw import get_event
from tests.e2e.gateway_client import call
from tests.integration.registry_support import wait_until
from tests.integration.runtime_support import running_host

STACK = "payfn-deploy-test"
DB_FUNCTIONS = {"AuthorizeFunction", "CaptureFunction", "RefundFunction", "GetPaymentFunction",
                "OutboxRelayFunction", "LedgerConsumerFunction", "BalanceProjectionFunction"}
LEFT_OUT_TYPES = {"AWS::Lambda::EventSourceMapping", "AWS::ApiGateway::Deployment", "AWS::ApiGateway::Stage",
                  "Output"}


@dataclass
class Moto:
    url: str
    process: subprocess.Popen[bytes]

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="payfn-local", aws_secret_access_key="payfn-local")


@dataclass
class Deployment:
    result: subprocess.CompletedProcess[str]
    resources: dict[str, dict[str, Any]]
    secret_arn: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(log: Path, env: dict[str, str] | None = None) -> Moto:
    """A private ``moto.server`` on a free port, answering before it is returned."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=out, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"moto exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return True
        except (OSError, urllib.error.URLError):
            return False

    wait_until(answers, timeout=30, interval=0.1)
    return Moto(url, process)


def stop(moto: Moto) -> None:
    moto.process.terminate()
    try:
        moto.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        moto.process.kill()
        moto.process.wait()


def payfn_deploy(*args: str, env: dict[str, str],
                 unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in unset}
    environment.update(SAM_CLI_TELEMETRY="0", **env)
    return subprocess.run([sys.executable, "-m", "infra.cli", "deploy", *args], cwd=REPO_ROOT,
                          env=environment,
                          capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy") / "build"


@pytest.fixture(scope="module")
def deployment(moto: Moto, build_dir: Path, settings: Settings) -> Deployment:
    secret = moto.client("secretsmanager").create_secret(
        Name="payfn/db-password", SecretString=f'{{"username": "{settings.db_user}", '
                                               f'"password": "{settings.db_password}"}}')
    result = payfn_deploy("--env", "local", "--stack-name", STACK, "--build-dir", str(build_dir),
                          "--parameter-overrides", "DbPassword=", f"DbPasswordSecretArn={secret['ARN']}",
                          env={"PAYFN_AWS_ENDPOINT_URL": moto.url})
    assert result.returncode == 0, result.stdout + result.stderr
    summaries = moto.client("cloudformation").list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    return Deployment(result, {s["LogicalResourceId"]: s for s in summaries}, secret["ARN"])


def physical_id(deployment: Deployment, logical_id: str) -> str:
    return str(deployment.resources[logical_id]["PhysicalResourceId"])


def test_stack_reaches_create_complete_and_prints_outputs(deployment: Deployment) -> None:
    out = deployment.result.stdout
    assert f"stack {STACK}: CREATE_COMPLETE" in out
    assert "ApiUrl" in out and ".execute-api.us-east-1.amazonaws.com/v1" in out
    assert f"RegistryTableName  {STACK}-registry" in out
    assert "Traceback" not in deployment.result.stderr
    assert all(s["ResourceStatus"] == "CREATE_COMPLETE" for s in deployment.resources.values())


def test_only_what_moto_does_not_emulate_is_left_out(deployment: Deployment) -> None:
    left_out = [line for line in deployment.result.stdout.splitlines() if line.strip().startswith("left out")]
    assert left_out, "moto gaps must be reported"
    types = {line.split("(", 1)[1].split(")", 1)[0] for line in left_out}
    assert types == LEFT_OUT_TYPES
    kafka_events = sum(1 for spec in load_template().functions() for event in spec.events
                       if event.type == "SelfManagedKafka")
    assert sum("EventSourceMapping" in line for line in left_out) == kafka_events


def test_functions_roles_and_least_privilege(deployment: Deployment, moto: Moto, settings: Settings) -> None:
    lam, iam = moto.client("lambda"), moto.client("iam")
    for spec in load_template().functions():
        config = lam.get_function_configuration(FunctionName=physical_id(deployment, spec.logical_id))
        assert config["Handler"] == spec.handler and config["Runtime"] == spec.runtime
        assert config["Timeout"] == int(spec.timeout) and config["MemorySize"] == spec.memory_size
        variables = config["Environment"]["Variables"]
        assert variables["PAYFN_DB_HOST"] == settings.db_host
        assert variables["PAYFN_REDIS_PORT"] == str(settings.redis_port)
        assert variables["PAYFN_DB_PASSWORD"] == ""
        assert variables["PAYFN_DB_PASSWORD_SECRET_ARN"] == deployment.secret_arn
        role_name = config["Role"].rsplit("/", 1)[1]
        assert role_name == physical_id(deployment, f"{spec.logical_id}Role")
        iam.get_role(RoleName=role_name)
        inline = set(iam.list_role_policies(RoleName=role_name)["PolicyNames"])
        reads_secret = "read-db-password-secret" in inline
        assert reads_secret == (spec.logical_id in DB_FUNCTIONS), spec.logical_id
        assert not any("dynamodb" in name.lower() for name in inline), "no function needs DynamoDB"


def test_layer_published_and_referenced_by_every_function(deployment: Deployment, moto: Moto) -> None:
    template = moto.client("cloudformation").get_template(StackName=STACK)["TemplateBody"]
    layers = [lid for lid, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::LayerVersion"]
    assert len(layers) == 1
    for spec in load_template().functions():
        assert template["Resources"][spec.logical_id]["Properties"]["Layers"] == [{"Ref": layers[0]}]
    content = template["Resources"][layers[0]]["Properties"]["Content"]
    size = moto.client("s3").head_object(Bucket=content["S3Bucket"], Key=content["S3Key"])["ContentLength"]
    published = moto.client("lambda").list_layers()["Layers"]
    assert any(layer["LatestMatchingVersion"].get("LayerVersionArn") for layer in published)
    assert size > 1_000_000, "the layer carries its dependencies (pymysql, redis, powertools…)"


def test_tables_schedule_and_log_groups(deployment: Deployment, moto: Moto) -> None:
    table = moto.client("dynamodb").describe_table(TableName=f"{STACK}-registry")["Table"]
    assert {k["AttributeName"] for k in table["KeySchema"]} == {"app", "instanceId"}
    rule_name = physical_id(deployment, "OutboxRelayFunctionRelaySchedule")
    events = moto.client("events")
    rule = events.describe_rule(Name=rule_name)
    assert rule["ScheduleExpression"] == "rate(1 minute)" and rule["State"] == "ENABLED"
    targets = events.list_targets_by_rule(Rule=rule_name)["Targets"]
    assert [t["Arn"].rsplit(":", 1)[1] for t in targets] == [physical_id(deployment, "OutboxRelayFunction")]
    described = moto.client("logs").describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]
    groups = {g["logGroupName"]: g.get("retentionInDays") for g in described}
    for spec in load_template().functions():
        assert groups[f"/aws/lambda/{physical_id(deployment, spec.logical_id)}"] == 14


def test_redeploy_uploads_nothing_and_updates(deployment: Deployment, moto: Moto, build_dir: Path) -> None:
    secret = f"DbPasswordSecretArn={deployment.secret_arn}"
    result = payfn_deploy("--env", "local", "--stack-name", STACK, "--build-dir", str(build_dir),
                          "--parameter-overrides", "DbPassword=", secret,
                          env={"PAYFN_AWS_ENDPOINT_URL": moto.url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(0 new artifact(s))" in result.stdout
    assert f"stack {STACK}: UPDATE_COMPLETE" in result.stdout or "no changes" in result.stdout


def _download_zip(moto: Moto, location: dict[str, str], dest: Path) -> Path:
    body = moto.client("s3").get_object(Bucket=location["S3Bucket"], Key=location["S3Key"])["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        archive.extractall(dest)
    return dest


def test_deployed_function_answers_as_the_gateway_does(
        deployment: Deployment, moto: Moto, platform: Any, tmp_path: Path) -> None:
    """GetPaymentFunction as deployed (configuration, code, layer, secret) vs the live gateway."""
    gateway = load_settings().gateway_url
    merchant = f"m-{uuid.uuid4().hex[:10]}"
    created = call(gateway, "POST", "/api/payments/authorize", {
        "merchantId": merchant, "amount": 1234, "currency": "EUR", "idempotencyKey": uuid.uuid4().hex})
    assert created.status == 200, created.body
    payment_id = created.json()["paymentId"]
    via_gateway = call(gateway, "GET", f"/api/payments/{payment_id}?merchantId={merchant}")
    assert via_gateway.status == 200

    function_name = physical_id(deployment, "GetPaymentFunction")
    config = moto.client("lambda").get_function_configuration(FunctionName=function_name)
    template = moto.client("cloudformation").get_template(StackName=STACK)["TemplateBody"]
    layer_id = template["Resources"]["GetPaymentFunction"]["Properties"]["Layers"][0]["Ref"]
    _download_zip(moto, template["Resources"]["GetPaymentFunction"]["Properties"]["Code"], tmp_path / "task")
    _download_zip(moto, template["Resources"][layer_id]["Properties"]["Content"], tmp_path / "layer")
    deployed = {"Resources": {
        "DeployedLayer": {"Type": "AWS::Serverless::LayerVersion", "Properties": {"ContentUri": "layer/"}},
        "GetPaymentFunction": {"Type": "AWS::Serverless::Function", "Properties": {
            "FunctionName": function_name, "CodeUri": "task/", "Handler": config["Handler"],
            "Runtime": config["Runtime"], "Timeout": config["Timeout"], "MemorySize": config["MemorySize"],
            "Layers": ["DeployedLayer"], "Environment": {"Variables": config["Environment"]["Variables"]}}},
    }}
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(deployed), encoding="utf-8")
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    # Lambda's 10 s init limit is not under test here (no timed assertions): a loaded
    # CI machine importing the layer must not turn into a wrong answer.
    with running_host(host_dir, "--functions", "GetPaymentFunction",
                      "--template", str(tmp_path / "template.yaml"), "--no-register",
                      env={"PAYFN_RUNTIME_INIT_TIMEOUT_SECONDS": "60"}) as host:
        answer = host.lambda_client().invoke(FunctionName=function_name,
                                             Payload=json.dumps(get_event(payment_id, merchant)).encode())
        assert "FunctionError" not in answer, answer["Payload"].read()
        response = json.loads(answer["Payload"].read())
    assert response["statusCode"] == 200, response
    assert json.loads(response["body"]) == via_gateway.json()


def test_missing_bucket_is_a_readable_error(moto: Moto) -> None:
    result = payfn_deploy("--env", "aws", "--endpoint-url", moto.url, "--s3-bucket", "no-such-bucket",
                          "--stack-name", "payfn-missing-bucket", env={})
    assert result.returncode == 1
    assert "S3 bucket 'no-such-bucket' does not exist" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_credentials_is_a_readable_error(tmp_path: Path) -> None:
    unset = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true"}
    result = payfn_deploy("--env", "aws", env=env, unset=unset)
    assert result.returncode == 1
    assert "no AWS credentials" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_credentials_are_a_readable_error(tmp_path: Path) -> None:
    """A moto server that checks credentials (as AWS does) refuses payfn's emulator keys."""
    strict = start_moto(tmp_path / "moto.log", env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        result = payfn_deploy("--env", "aws", "--endpoint-url", strict.url, "--s3-bucket", "any",
                              "--stack-name", "payfn-bad-credentials", env={})
    finally:
        stop(strict)
    assert result.returncode == 1
    assert "refused the credentials" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_failed_resource_reports_its_reason(moto: Moto, tmp_path: Path) -> None:
    """A resource the endpoint cannot create: the deploy gives the endpoint's reason, exit 1.

    moto creates resources inside CreateStack, so its reason comes with that call; on
    AWS it comes from the stack events (``failure_reasons``, unit-tested).
    """
    template = REPO_ROOT / "tests" / "fixtures" / "deploy" / "failing.yaml"
    result = payfn_deploy("--env", "local", "--stack-name", "payfn-failing", "--template-file", str(template),
                          "--build-dir", str(tmp_path / "build"), env={"PAYFN_AWS_ENDPOINT_URL": moto.url})
    assert result.returncode == 1, result.stdout
    assert "could not deploy stack payfn-failing: InvalidParameterValueException: Missing EventSourceArn" \
        in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
