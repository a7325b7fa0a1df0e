"""Pure pieces of the Lambda runtime emulation: names, env, logs, frames, context, fingerprints."""

from __future__ import annotations

import base64
import decimal
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from payfn_shared.platform.config import ConfigError, Settings, load_dataclass

from infra.runtime import logs
from infra.runtime.config import HostConfig
from infra.runtime.environment import exit_reason
from infra.runtime.functions import (
    FunctionConfigError,
    FunctionDefinition,
    load_definitions,
    new_log_stream_name,
    parse_handler,
    template_parameters,
)
from infra.runtime.invoker import FunctionHost, new_request_id, tree_signature
from infra.runtime.metrics import RuntimeMetrics
from infra.runtime.protocol import FrameReader, encode_frame, split_frames
from infra.runtime.worker import LambdaContext, error_payload, serialize_result, serve
from infra.sam.template import REPO_ROOT, load_template

FIXTURE_TEMPLATE = REPO_ROOT / "tests" / "fixtures" / "template.yaml"
FIXTURE_CODE = REPO_ROOT / "tests" / "fixtures" / "functions"


@pytest.fixture(scope="module")
def definitions() -> dict[str, FunctionDefinition]:
    template = load_template(FIXTURE_TEMPLATE, {"DbHost": "db.local"})
    found = load_definitions(template, FIXTURE_TEMPLATE.parent, "TEST-SERVICE", ["UntaggedFunction"])
    return {d.logical_id: d for d in found}


def test_parse_handler() -> None:
    assert parse_handler("app.handler") == ("app", "handler")
    assert parse_handler("pkg/app.lambda_handler") == ("pkg.app", "lambda_handler")
    assert parse_handler("pkg.sub.app.handler") == ("pkg.sub.app", "handler")
    for bad in ("handler", ".handler", "app."):
        with pytest.raises(FunctionConfigError):
            parse_handler(bad)


def test_definitions_from_fixture_template(definitions: dict[str, FunctionDefinition]) -> None:
    assert "UntaggedFunction" in definitions and "NoopFunction" in definitions
    inspect = definitions["InspectFunction"]
    assert inspect.code_dir == FIXTURE_CODE.resolve()
    assert inspect.layer_dirs == ((REPO_ROOT / "layers" / "shared").resolve(),)
    assert inspect.memory_size == 192
    assert inspect.timeout == 5
    assert inspect.service == "TEST-SERVICE"
    assert inspect.variables == {"PAYFN_DB_HOST": "db.local", "FIXTURE_GLOBAL": "from-globals",
                                 "FIXTURE_OWN": "from-function"}
    assert definitions["ThrottledFunction"].reserved_concurrency == 1
    assert definitions["SleepFunction"].timeout == 1
    untagged = definitions["UntaggedFunction"]
    assert untagged.service is None
    assert untagged.function_name == "payfn-untagged"
    assert untagged.arn == "arn:aws:lambda:us-east-1:123456789012:function:payfn-untagged"


def test_load_definitions_rejects_unknown_names() -> None:
    template = load_template(FIXTURE_TEMPLATE)
    with pytest.raises(FunctionConfigError, match="NoSuchFunction"):
        load_definitions(template, FIXTURE_TEMPLATE.parent, None, ["NoSuchFunction"])
    assert load_definitions(template, FIXTURE_TEMPLATE.parent, "NO-SUCH-SERVICE") == []


def test_project_template_ping_function_runs_with_the_shared_layer() -> None:
    template = load_template(parameters=template_parameters(Settings()))
    ingest = load_definitions(template, REPO_ROOT, "INGEST-SERVICE")
    (ping,) = [d for d in ingest if d.logical_id == "PingFunction"]
    assert ping.code_dir == (REPO_ROOT / "functions" / "ping").resolve()
    assert (ping.layer_dirs[0] / "payfn_shared").is_dir()


def test_environment_variables(definitions: dict[str, FunctionDefinition]) -> None:
    inspect = definitions["InspectFunction"]
    env = inspect.environment("2026/01/01/[$LATEST]abc", base={"PATH": "/bin", "SECRET_OF_HOST": "x"})
    assert env["FIXTURE_GLOBAL"] == "from-globals" and env["FIXTURE_OWN"] == "from-function"
    assert env["PAYFN_DB_HOST"] == "db.local"
    assert env["_HANDLER"] == "inspect_env.handler"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "InspectFunction"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "192"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/InspectFunction"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == "2026/01/01/[$LATEST]abc"
    assert env["LAMBDA_TASK_ROOT"] == str(FIXTURE_CODE.resolve())
    assert env["PATH"] == "/bin"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    assert "SECRET_OF_HOST" not in env


def test_reserved_variables_win_over_the_template() -> None:
    template = load_template(FIXTURE_TEMPLATE)
    (spec,) = [s for s in template.functions() if s.logical_id == "NoopFunction"]
    spec.properties["Environment"]["Variables"]["AWS_REGION"] = "eu-west-1"
    definition = FunctionDefinition.from_spec(spec, template, FIXTURE_TEMPLATE.parent)
    assert definition.environment("s", base={})["AWS_REGION"] == "us-east-1"


def test_template_parameters_come_from_settings() -> None:
    settings = Settings(db_host="10.0.0.1", db_port=3307, redis_port=6380, kafka_bootstrap="k:1",
                        aws_endpoint_url="http://moto:5000", db_password="pw")
    params = template_parameters(settings)
    assert params["DbHost"] == "10.0.0.1" and params["DbPort"] == "3307"
    assert params["RedisPort"] == "6380" and params["KafkaBootstrapServers"] == "k:1"
    assert params["AwsEndpointUrl"] == "http://moto:5000" and params["DbPassword"] == "pw"


def test_log_stream_name_shape() -> None:
    name = new_log_stream_name()
    day, _, rest = name.rpartition("/")
    assert len(day.split("/")) == 3 and rest.startswith("[$LATEST]") and len(rest) == len("[$LATEST]") + 32


def test_platform_log_lines() -> None:
    assert logs.start_line("r1") == "START RequestId: r1 Version: $LATEST\n"
    assert logs.end_line("r1") == "END RequestId: r1\n"
    warm = logs.InvocationReport("r1", 12.341, 256, 40).line()
    assert warm == ("REPORT RequestId: r1\tDuration: 12.34 ms\tBilled Duration: 13 ms\tMemory Size: 256 MB\t"
                    "Max Memory Used: 40 MB\t\n")
    cold = logs.InvocationReport("r2", 0.2, 128, 20, init_duration_ms=101.5).line()
    assert "\tBilled Duration: 1 ms\t" in cold and cold.endswith("\tInit Duration: 101.50 ms\t\n")
    timeout = logs.InvocationReport("r3", 3000.5, 128, 20, status="timeout",
                                    error_type="Sandbox.Timedout").line()
    assert timeout.endswith("\tStatus: timeout\tError Type: Sandbox.Timedout\t\n")


def test_frames_round_trip_and_partial_reads() -> None:
    data = b"".join([encode_frame({"id": "a"}, b'{"x": 1}'), encode_frame({"id": "b"}),
                     encode_frame({"id": "c"}, b"[]")])
    buffer = bytearray(data[:-3])
    frames = split_frames(buffer)
    assert frames == [({"id": "a"}, b'{"x": 1}'), ({"id": "b"}, b"")]
    buffer += data[-3:]
    assert split_frames(buffer) == [({"id": "c"}, b"[]")]
    assert buffer == bytearray()


def test_context_object() -> None:
    environ = {"AWS_LAMBDA_FUNCTION_NAME": "F", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
               "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/F",
               "AWS_LAMBDA_LOG_STREAM_NAME": "s"}
    deadline = int(time.time() * 1000) + 3000
    context = LambdaContext("rid", "arn:aws:lambda:us-east-1:123456789012:function:F", deadline,
                            {"custom": {"k": "v"}}, environ)
    assert context.aws_request_id == "rid"
    assert context.function_name == "F" and context.function_version == "$LATEST"
    assert context.memory_limit_in_mb == "256"
    assert context.invoked_function_arn.endswith(":function:F")
    assert context.log_group_name == "/aws/lambda/F" and context.log_stream_name == "s"
    assert context.client_context is not None and context.client_context.custom == {"k": "v"}
    assert 0 < context.get_remaining_time_in_millis() <= 3000
    expired = LambdaContext("rid", "arn", int(time.time() * 1000) - 10, None, environ)
    assert expired.get_remaining_time_in_millis() == 0
    assert expired.client_context is None


def test_error_payload_keeps_only_the_functions_frames() -> None:
    def failing() -> None:
        raise KeyError("missing")

    try:
        failing()
    except KeyError as exc:
        payload = error_payload(exc, "rid")
    assert payload["errorType"] == "KeyError"
    assert payload["errorMessage"] == "'missing'"
    assert payload["requestId"] == "rid"
    assert any("in failing" in line for line in payload["stackTrace"])


def test_serialize_result() -> None:
    assert serialize_result({"a": decimal.Decimal("1.5"), 1: None}) == b'{"a":1.5,"1":null}'
    assert serialize_result(2**70) == str(2**70).encode()
    with pytest.raises(TypeError):
        serialize_result({"a": object()})


def test_exit_reason_wording() -> None:
    assert exit_reason(1) == "Runtime exited with error: exit status 1"
    assert exit_reason(-9) == "Runtime exited with error: signal: killed"
    assert exit_reason(-11) == "Runtime exited with error: signal: segmentation fault"
    assert exit_reason(0) == "Runtime exited without providing a reason"


def test_tree_signature_sees_edits_additions_and_deletions(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("x = 1\n")
    first = tree_signature(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"cache")
    assert tree_signature(tmp_path) == first
    (tmp_path / "app.py").write_text("x = 22\n")
    edited = tree_signature(tmp_path)
    assert edited != first
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("")
    added = tree_signature(tmp_path)
    assert added[1] == edited[1] + 1
    os.remove(tmp_path / "pkg" / "mod.py")
    assert tree_signature(tmp_path)[1] == edited[1]


def test_function_names_resolve_like_lambda(definitions: dict[str, FunctionDefinition]) -> None:
    host = FunctionHost(definitions.values(), HostConfig(), RuntimeMetrics(), write=lambda text: None)
    untagged = host.functions["UntaggedFunction"]
    for name in ("UntaggedFunction", "payfn-untagged", "payfn-untagged:$LATEST",
                 "arn:aws:lambda:us-east-1:123456789012:function:payfn-untagged",
                 "arn:aws:lambda:us-east-1:123456789012:function:payfn-untagged:$LATEST",
                 "123456789012:function:payfn-untagged"):
        assert host.resolve(name) is untagged, name
    assert host.resolve("payfn-untagged:7") is None
    assert host.resolve("Nope") is None
    assert host.functions["ThrottledFunction"].pool.limit == 1
    assert host.functions["NoopFunction"].pool.limit == HostConfig().runtime_max_environments


def test_environments_per_function_default_to_two_per_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2})
    assert HostConfig().runtime_max_environments == 6
    assert load_dataclass(HostConfig, {"PAYFN_ENV_FILE": "/nonexistent"}).runtime_max_environments == 6


def test_host_config_from_environment() -> None:
    config = load_dataclass(HostConfig, {
        "PAYFN_RUNTIME_MAX_ENVIRONMENTS": "3", "PAYFN_REGISTRY_RENEW_SECONDS": "5",
        "PAYFN_RUNTIME_QUEUE_WAIT_MS": "0", "PAYFN_ENV_FILE": "/nonexistent"})
    assert config.runtime_max_environments == 3
    assert config.registry_renew_seconds == 5
    assert config.runtime_queue_wait_ms == 0
    with pytest.raises(ConfigError):
        load_dataclass(HostConfig, {"PAYFN_RUNTIME_MAX_ENVIRONMENTS": "0", "PAYFN_ENV_FILE": "/nonexistent"})


def test_request_ids_are_version_4_uuids() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for rid in list(ids)[:50]:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_worker_serve_loop_answers_results_errors_and_marshal_errors() -> None:
    def handler(event: dict, context: LambdaContext) -> object:
        if event["kind"] == "raise":
            raise ValueError("bad input")
        if event["kind"] == "unserializable":
            return {"when": object()}
        return {"echo": event, "request": context.aws_request_id}

    host_end, worker_end = socket.socketpair()
    thread = threading.Thread(target=serve, args=(worker_end, handler), daemon=True)
    thread.start()
    reader = FrameReader(host_end)
    deadline = int(time.time() * 1000) + 1000
    answers = {}
    for kind in ("ok", "raise", "unserializable"):
        event = f'{{"kind": "{kind}"}}'.encode()
        host_end.sendall(encode_frame({"id": kind, "arn": "arn", "deadline_ms": deadline}, event))
        meta, body = reader.read()
        answers[kind] = (meta["ok"], meta["rss_kb"] > 0, body)
    host_end.close()
    thread.join(timeout=5)
    assert answers["ok"] == (True, True, b'{"echo":{"kind":"ok"},"request":"ok"}')
    ok, _, raised = answers["raise"]
    assert not ok and b'"errorType":"ValueError"' in raised and b'"requestId":"raise"' in raised
    ok, _, marshal = answers["unserializable"]
    assert not ok and b'"errorType":"Runtime.MarshalError"' in marshal
    assert b"Unable to marshal response" in marshal
    assert not thread.is_alive(), "the loop ends when the host closes the socket"


def test_log_tail_keeps_the_last_4_kb() -> None:
    log = "x" * 5000 + "END RequestId: r\n"
    decoded = base64.b64decode(logs.tail(log))
    assert len(decoded) == 4096 and decoded.endswith(b"END RequestId: r\n")
    assert base64.b64decode(logs.tail("short\n")) == b"short\n"
