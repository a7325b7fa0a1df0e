"""A real function host over the test template, driven through boto3's Lambda client."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from infra.sam.template import REPO_ROOT
from tests.integration.registry_support import wait_until
from tests.integration.runtime_support import FIXTURE_TEMPLATE, HostProcess, running_host
from tests.invoke_auth import invoke_headers


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    with running_host(tmp_path_factory.mktemp("runtime-host"), "--service", "TEST-SERVICE",
                      "--template", str(FIXTURE_TEMPLATE), "--no-register") as process:
        yield process


@pytest.fixture(scope="module")
def client(host: HostProcess) -> Any:
    return host.lambda_client()


def invoke(client: Any, name: str, payload: Any = None, **kwargs: Any) -> tuple[dict[str, Any], Any]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(payload or {}).encode(), **kwargs)
    body = response["Payload"].read()
    return response, json.loads(body) if body else None


def request_id(response: dict[str, Any]) -> str:
    return response["ResponseMetadata"]["RequestId"]


def report_line(host: HostProcess, rid: str) -> str:
    lines = wait_until(lambda: [line for line in host.log_lines_for(rid) if line.startswith("REPORT")])
    return lines[0]


def test_boto3_invoke_returns_the_result(client: Any) -> None:
    response, body = invoke(client, "NoopFunction")
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    assert body == {"ok": True}


def test_start_end_report_lines(host: HostProcess, client: Any) -> None:
    response, _ = invoke(client, "InspectFunction")
    rid = request_id(response)
    report = report_line(host, rid)
    log = host.log()
    start = log.index(f"START RequestId: {rid} Version: $LATEST\n")
    printed = log.index(f"inspect_env printing for {rid}\n")
    end = log.index(f"END RequestId: {rid}\n")
    assert start < printed < end < log.index(report)
    assert "[WARNING]\t" in log and f"\t{rid}\tinspect_env logging" in log
    for field in ("Duration: ", "Billed Duration: ", "Memory Size: 192 MB", "Max Memory Used: "):
        assert f"\t{field}" in report


def test_warm_environment_is_reused(host: HostProcess, client: Any) -> None:
    _, body1 = invoke(client, "InspectFunction")
    second, body2 = invoke(client, "InspectFunction")
    assert body1["pid"] == body2["pid"]
    assert "Init Duration" not in report_line(host, request_id(second))


def test_environment_context_and_sys_path(client: Any) -> None:
    custom = base64.b64encode(json.dumps({"custom": {"tenant": "t1"}}).encode()).decode()
    response, body = invoke(client, "InspectFunction", {"hello": "world"}, ClientContext=custom)
    code_dir = str((REPO_ROOT / "tests" / "fixtures" / "functions").resolve())
    layer_dir = str((REPO_ROOT / "layers" / "shared").resolve())
    env = body["env"]
    assert body["event"] == {"hello": "world"}
    assert env["FIXTURE_GLOBAL"] == "from-globals" and env["FIXTURE_OWN"] == "from-function"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "InspectFunction"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "192"
    assert env["_HANDLER"] == "inspect_env.handler"
    assert env["LAMBDA_TASK_ROOT"] == code_dir == body["cwd"]
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert "PAYFN_RUNTIME_QUEUE_WAIT_MS" not in env, "the host's own variables must not leak"
    assert body["sys_path"][:2] == [code_dir, layer_dir]
    assert body["payfn_shared"].startswith(layer_dir)
    context = body["context"]
    assert context["aws_request_id"] == request_id(response)
    assert context["function_name"] == "InspectFunction" and context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == "arn:aws:lambda:us-east-1:123456789012:function:InspectFunction"
    assert context["memory_limit_in_mb"] == "192"
    assert context["log_group_name"] == "/aws/lambda/InspectFunction"
    assert "[$LATEST]" in context["log_stream_name"]
    assert 0 < context["remaining_ms"] <= 5000
    assert context["client_context_custom"] == {"tenant": "t1"}


def test_unhandled_exception_is_lambdas_error_payload(client: Any) -> None:
    response, body = invoke(client, "RaiseFunction", {"reason": "insufficient funds"})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "PaymentDeclinedError"
    assert body["errorMessage"] == "declined: insufficient funds"
    assert body["requestId"] == request_id(response)
    assert any("raiser.py" in frame for frame in body["stackTrace"])
    assert not any("infra/runtime" in frame for frame in body["stackTrace"])


def test_timeout_kills_the_environment(host: HostProcess, client: Any) -> None:
    _, warm = invoke(client, "SleepFunction", {"seconds": 0})
    response, body = invoke(client, "SleepFunction", {"seconds": 30})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    expected = f"RequestId: {request_id(response)} Error: Task timed out after 1.00 seconds"
    assert body["errorMessage"] == expected
    assert "\tStatus: timeout" in report_line(host, request_id(response))
    after, fresh = invoke(client, "SleepFunction", {"seconds": 0})
    assert fresh["pid"] != warm["pid"]
    assert "Init Duration" in report_line(host, request_id(after))


def test_crash_is_contained_then_a_fresh_environment_serves(host: HostProcess, client: Any) -> None:
    _, warm = invoke(client, "CrashFunction", {"crash": False})
    response, body = invoke(client, "CrashFunction", {"crash": True, "status": 1})
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Runtime.ExitError",
                    "errorMessage": f"RequestId: {request_id(response)} Error: Runtime exited with error: "
                                    "exit status 1"}
    assert "\tError Type: Runtime.ExitError" in report_line(host, request_id(response))
    after, fresh = invoke(client, "CrashFunction", {"crash": False})
    assert "FunctionError" not in after
    assert fresh["pid"] != warm["pid"]
    assert "Init Duration" in report_line(host, request_id(after))


def test_throttled_at_reserved_concurrency(host: HostProcess, client: Any) -> None:
    results: list[Any] = []
    slow = threading.Thread(
        target=lambda: results.append(invoke(client, "ThrottledFunction", {"seconds": 2})))
    slow.start()
    try:
        wait_until(lambda: host.get_json("/health")["functions"]["ThrottledFunction"]["busy"] == 1,
                   interval=0.02)
        with pytest.raises(ClientError) as caught:
            invoke(client, "ThrottledFunction", {"seconds": 0})
        error = caught.value.response
        assert error["Error"]["Code"] == "TooManyRequestsException"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert error["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    finally:
        slow.join()
    assert results[0][1]["slept"] == 2
    response, _ = invoke(client, "ThrottledFunction", {"seconds": 0})
    assert response["StatusCode"] == 200
    metrics = host.get_text("/metrics")
    assert 'payfn_lambda_throttles_total{function="ThrottledFunction",service="TEST-SERVICE"} 1.0' in metrics


def test_memory_over_memory_size_is_an_out_of_memory_error(client: Any) -> None:
    response, body = invoke(client, "InspectFunction", {"allocate_mb": 256})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.OutOfMemory"
    _, after = invoke(client, "InspectFunction")
    assert after["pid"]


def test_init_errors_are_reported_like_the_runtime(client: Any) -> None:
    response, body = invoke(client, "MissingHandlerFunction")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.HandlerNotFound"
    assert body["errorMessage"] == "Handler 'no_such_handler' missing on module 'noop'"


def test_names_arns_and_unknown_functions(client: Any) -> None:
    arn = "arn:aws:lambda:us-east-1:123456789012:function:NoopFunction"
    assert invoke(client, arn)[1] == {"ok": True}
    assert invoke(client, "NoopFunction", Qualifier="$LATEST")[1] == {"ok": True}
    with pytest.raises(ClientError) as caught:
        invoke(client, "NoSuchFunction")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_event_and_dry_run_invocation_types(host: HostProcess, client: Any) -> None:
    event = client.invoke(FunctionName="NoopFunction", InvocationType="Event", Payload=b'{"async": true}')
    assert event["StatusCode"] == 202
    dry = client.invoke(FunctionName="NoopFunction", InvocationType="DryRun")
    assert dry["StatusCode"] == 204
    assert "REPORT" in report_line(host, event["ResponseMetadata"]["RequestId"])


def test_payload_must_be_json(host: HostProcess) -> None:
    request = urllib.request.Request(host.url + "/2015-03-31/functions/NoopFunction/invocations",
                                     data=b"{not json", method="POST", headers=invoke_headers())
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 400
    assert caught.value.headers["x-amzn-ErrorType"] == "InvalidRequestContentException"


def test_health_and_metrics(host: HostProcess, client: Any) -> None:
    invoke(client, "NoopFunction")
    health = host.get_json("/health")
    assert health["status"] == "UP" and health["service"] == "TEST-SERVICE"
    assert health["functions"]["ThrottledFunction"]["limit"] == 1
    metrics = host.get_text("/metrics")
    families = ("payfn_lambda_invocations_total", "payfn_lambda_errors_total", "payfn_lambda_throttles_total",
                "payfn_lambda_duration_seconds_count", "payfn_lambda_cold_starts_total",
                "payfn_lambda_concurrent_executions", "payfn_lambda_timeouts_total")
    for family in families:
        assert f'{family}{{function="NoopFunction",service="TEST-SERVICE"' in metrics, family
    assert "_created" not in metrics


def test_untagged_functions_run_with_the_functions_flag(tmp_path: Path) -> None:
    args = ("--functions", "UntaggedFunction", "--template", str(FIXTURE_TEMPLATE))
    with running_host(tmp_path, *args) as other:
        client = other.lambda_client()
        assert invoke(client, "payfn-untagged")[1] == {"ok": True}
        with pytest.raises(ClientError):
            invoke(client, "NoopFunction")


def test_a_segfault_is_a_runtime_exit_error(client: Any) -> None:
    response, body = invoke(client, "CrashFunction", {"signal": 11})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].endswith("Runtime exited with error: signal: segmentation fault")
    assert invoke(client, "CrashFunction", {"crash": False})[1]["pid"]


def test_log_type_tail_returns_the_invocations_log(client: Any) -> None:
    response, _ = invoke(client, "InspectFunction", LogType="Tail")
    rid = request_id(response)
    log = base64.b64decode(response["LogResult"]).decode()
    assert log.startswith(f"START RequestId: {rid} Version: $LATEST\n")
    assert f"inspect_env printing for {rid}\n" in log
    assert f"\t{rid}\tinspect_env logging" in log
    assert f"END RequestId: {rid}\n" in log and f"REPORT RequestId: {rid}\t" in log
    timed_out, _ = invoke(client, "SleepFunction", {"seconds": 5}, LogType="Tail")
    assert "\tStatus: timeout" in base64.b64decode(timed_out["LogResult"]).decode()
    assert "LogResult" not in invoke(client, "NoopFunction")[0]
