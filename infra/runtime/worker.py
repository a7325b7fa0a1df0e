"""An execution environment: the process that runs one function's handler.

Started by the host (``python -m infra.runtime.worker --fd N --host-pid P [--layer DIR]…``) with
the function's environment variables and its code folder as working directory. It
does what Lambda's Python runtime does inside its sandbox: *init* (``sys.path``,
layers, import the handler, report ready or the init error) and then *invoke*, one
invocation frame at a time, answering the JSON result or Lambda's error payload.

Timeouts and crashes are the host's business: it kills this process, so nothing
here needs a watchdog thread.

Init, invoke and logging details: docs/RUNTIME.md#infraruntimeworker.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import decimal
import importlib
import io
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from infra.runtime.logs import TAIL_BYTES, start_line
from infra.runtime.protocol import FrameError, FrameReader, encode_frame

PR_SET_PDEATHSIG = 1

_current_request_id = ""


class ClientContext:
    """``context.client_context``: what the caller passed in ``X-Amz-Client-Context``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.client = data.get("client")
        self.custom = data.get("custom")
        self.env = data.get("env")


class CognitoIdentity:
    """``context.identity`` (empty for the Invoke API without Cognito credentials)."""

    def __init__(self, identity_id: str | None = None, pool_id: str | None = None) -> None:
        self.cognito_identity_id = identity_id
        self.cognito_identity_pool_id = pool_id


class LambdaContext:
    """The ``context`` argument of a handler, with the managed runtime's attributes.

    Names and types follow the Python runtime: ``memory_limit_in_mb`` is the string
    value of ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE`` there, so it is here too.
    """

    def __init__(
        self,
        request_id: str,
        invoked_function_arn: str,
        deadline_ms: int,
        client_context: dict[str, Any] | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.client_context = ClientContext(client_context) if client_context else None
        self.identity = CognitoIdentity()
        self.tenant_id = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the host kills this invocation (never negative)."""
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def __repr__(self) -> str:
        return f"LambdaContext(request_id={self.aws_request_id!r}, function_name={self.function_name!r})"


def error_payload(exc: BaseException, request_id: str | None, error_type: str | None = None,
                  message: str | None = None) -> dict[str, Any]:
    """Lambda's error document for an exception.

    ``stackTrace`` is formatted as the managed runtime does and, like there, holds only
    the function's frames: the runtime's own frame (this module) is dropped.
    """
    payload: dict[str, Any] = {
        "errorMessage": str(exc) if message is None else message,
        "errorType": error_type or type(exc).__name__,
    }
    if request_id is not None:
        payload["requestId"] = request_id
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.filename != __file__]
    payload["stackTrace"] = traceback.format_list(frames)
    return payload


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def serialize_result(result: Any) -> bytes:
    """The handler's return value as JSON; orjson first, the stdlib for what it refuses (big ints)."""
    try:
        return orjson.dumps(result, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(result, default=_json_default).encode()


def _setup_sys_path(code_dir: str, layers: list[str]) -> None:
    here = str(Path(__file__).resolve().parent)
    rest = [p for p in sys.path if p not in ("", ".", code_dir, here, os.getcwd())]
    sys.path[:] = [code_dir, *layers, *rest]


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = _current_request_id
        return True


def _setup_logging() -> logging.StreamHandler[Any]:
    handler: logging.StreamHandler[Any] = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s\n", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_RequestIdFilter())
    logging.getLogger().addHandler(handler)
    return handler


class _Tee(io.TextIOBase):
    """A text stream that writes through to ``target`` and keeps a copy (``LogType: Tail``)."""

    def __init__(self, target: Any, copy: list[str]) -> None:
        self.target = target
        self.copy = copy

    def write(self, text: str) -> int:
        self.copy.append(text)
        return int(self.target.write(text))

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def _captured(log_handler: logging.StreamHandler[Any] | None) -> Iterator[list[str]]:
    """Copy what the handler prints or logs while also letting it reach the log."""
    copy: list[str] = []
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(out, copy), _Tee(err, copy)
    if log_handler is not None:
        log_handler.setStream(sys.stdout)
    try:
        yield copy
    finally:
        sys.stdout, sys.stderr = out, err
        if log_handler is not None:
            log_handler.setStream(out)


def load_handler(handler: str) -> Callable[[Any, Any], Any]:
    """Import ``module.function``; failures raise ``InitError`` with the runtime's error type."""
    module_name, _, attribute = handler.rpartition(".")
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        message = f"Unable to import module '{module_name}': {exc}"
        raise InitError("Runtime.ImportModuleError", message) from exc
    except SyntaxError as exc:
        message = f"Syntax error in module '{module_name}': {exc}"
        raise InitError("Runtime.UserCodeSyntaxError", message) from exc
    function = getattr(module, attribute, None)
    if function is None or not callable(function):
        raise InitError("Runtime.HandlerNotFound", f"Handler '{attribute}' missing on module '{module_name}'")
    return function


class InitError(Exception):
    """The init phase failed in a way the runtime names itself (not the user's exception type)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


def _max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _write_stdout(text: str) -> None:
    """Straight to fd 1, past ``sys.stdout``'s buffer: the host writes END on the same file."""
    data = text.encode()
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(1, data):]


def _log_error(payload: dict[str, Any]) -> None:
    trace = "".join(payload.get("stackTrace", []))
    sys.stdout.write(f"[ERROR] {payload['errorType']}: {payload['errorMessage']}\nTraceback "
                     f"(most recent call last):\n{trace}")
    sys.stdout.flush()


def proxy_status(result: Any) -> int | None:
    """The ``statusCode`` of an API Gateway proxy result, if ``result`` is one.

    Read here, where the result is still a dict, so that the host can label its
    HTTP metrics without parsing every response body again.
    """
    if isinstance(result, dict):
        status = result.get("statusCode")
        if isinstance(status, int) and not isinstance(status, bool):
            return status
        if isinstance(status, str) and status.isascii() and status.isdigit():
            return int(status)
    return None


def _run(function: Callable[[Any, Any], Any], body: bytes,
         context: LambdaContext) -> tuple[bool, bytes, int | None]:
    """Call the handler; (succeeded, JSON result or Lambda's error payload, proxy status code)."""
    try:
        result = function(orjson.loads(body), context)
    except Exception as exc:
        payload = error_payload(exc, context.aws_request_id)
        _log_error(payload)
        return False, orjson.dumps(payload), None
    try:
        return True, serialize_result(result), proxy_status(result)
    except (TypeError, ValueError) as exc:
        message = f"Unable to marshal response: {exc}"
        payload = error_payload(exc, context.aws_request_id, "Runtime.MarshalError", message)
        payload["stackTrace"] = []
        _log_error(payload)
        return False, orjson.dumps(payload), None


def serve(sock: socket.socket, function: Callable[[Any, Any], Any],
          log_handler: logging.StreamHandler[Any] | None = None) -> None:
    """Answer invocations until the host closes the socket.

    With ``tail`` in the request (the Invoke API's ``LogType: Tail``) the handler's
    output is also returned to the host (``log``), which sends its end back to the
    caller in ``X-Amz-Log-Result``.
    """
    global _current_request_id
    reader = FrameReader(sock)
    version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    while True:
        try:
            meta, body = reader.read()
        except FrameError:
            return
        request_id = meta["id"]
        _current_request_id = request_id
        start = start_line(request_id, version)
        _write_stdout(start)
        context = LambdaContext(request_id, meta["arn"], meta["deadline_ms"], meta.get("client_context"))
        reply: dict[str, Any] = {}
        if meta.get("tail"):
            with _captured(log_handler) as copy:
                ok, out, status = _run(function, body, context)
            reply["log"] = start + "".join(copy)[-TAIL_BYTES:]
        else:
            ok, out, status = _run(function, body, context)
        reply["ok"] = ok
        if status is not None:
            reply["status"] = status
        reply["rss_kb"] = _max_rss_kb()
        sock.sendall(encode_frame(reply, out))


def _die_with_host(host_pid: int) -> None:
    """Have Linux kill this process if the host dies, even by SIGKILL.

    An idle environment notices a dead host by the socket's EOF, but one stuck in a
    handler would outlive it; on Lambda an environment never outlives its sandbox.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != host_pid:
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the socket shared with the host")
    parser.add_argument("--host-pid", type=int, required=True, help="the host's pid (to die with it)")
    parser.add_argument("--layer", action="append", default=[], help="a layer folder (repeatable)")
    args = parser.parse_args(argv)
    _die_with_host(args.host_pid)
    sock = socket.socket(fileno=args.fd)
    code_dir = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    _setup_sys_path(code_dir, args.layer)
    log_handler = _setup_logging()
    try:
        function = load_handler(os.environ["_HANDLER"])
    except InitError as exc:
        payload = {"errorMessage": str(exc), "errorType": exc.error_type, "stackTrace": []}
        _log_error(payload)
        sock.sendall(encode_frame({"type": "init_error", "rss_kb": _max_rss_kb()}, orjson.dumps(payload)))
        return
    except Exception as exc:
        payload = error_payload(exc, None)
        _log_error(payload)
        sock.sendall(encode_frame({"type": "init_error", "rss_kb": _max_rss_kb()}, orjson.dumps(payload)))
        return
    sock.sendall(encode_frame({"type": "ready", "rss_kb": _max_rss_kb()}))
    serve(sock, function, log_handler)


if __name__ == "__main__":
    main()
