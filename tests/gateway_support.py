"""Test doubles and harness for the gateway: a template, an Invoke-API stub, a gateway thread.

The stub speaks only Lambda's Invoke API (what the gateway calls on a function host)
and answers with a proxy result that echoes the event it received, so tests can
check both the event the gateway built and the response it mapped back.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import uvloop
from payfn_shared.platform.config import load_settings

from gateway.__main__ import build_directory
from gateway.api_map import ApiMap
from gateway.app import Gateway
from gateway.config import GatewayConfig
from gateway.spring_routes import ROUTES_PATH, load_routes
from infra.sam.template import load_template

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.11
    Timeout: 2
Resources:
  PayfnApi:
    Type: AWS::Serverless::Api
    Properties:
      StageName: v1
      Cors:
        AllowMethods: "'GET,POST,OPTIONS'"
        AllowHeaders: "'Content-Type,Idempotency-Key,X-Request-Id'"
        AllowOrigin: "'*'"
        MaxAge: "'600'"
  MonitoringApi:
    Type: AWS::Serverless::HttpApi
  AuthorizeFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Tags: {payfn:service: INGEST-SERVICE}
      Events:
        Authorize:
          Type: Api
          Properties: {RestApiId: !Ref PayfnApi, Path: /payments/authorize, Method: POST}
  GetPaymentFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Tags: {payfn:service: INGEST-SERVICE}
      Events:
        Get:
          Type: Api
          Properties: {RestApiId: !Ref PayfnApi, Path: "/payments/{paymentId}", Method: GET}
  FilesFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Tags: {payfn:service: INGEST-SERVICE}
      Events:
        Files:
          Type: Api
          Properties: {RestApiId: !Ref PayfnApi, Path: "/payments/files/{proxy+}", Method: ANY}
  CaptureFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Tags: {payfn:service: INGEST-SERVICE}
      Events:
        Capture:
          Type: Api
          Properties: {RestApiId: !Ref PayfnApi, Path: "/payments/capture/{paymentId}", Method: POST}
  BreakerFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Tags: {payfn:service: INGEST-SERVICE}
      Events:
        Status:
          Type: Api
          Properties: {RestApiId: !Ref PayfnApi, Path: /circuit-breaker/status, Method: GET}
  MonitoringFunction:
    Type: AWS::Serverless::Function
    Properties:
      Handler: app.handler
      Tags: {payfn:service: MONITORING-SERVICE}
      Events:
        Health:
          Type: HttpApi
          Properties: {ApiId: !Ref MonitoringApi, Path: "/monitoring/{check}", Method: GET}
"""


def write_template(folder: Path) -> Path:
    path = folder / "template.yaml"
    path.write_text(TEMPLATE, encoding="utf-8")
    return path


class InvokeStub(ThreadingHTTPServer):
    """A fake function host: Lambda's Invoke API, answering per the event's ``mode`` query."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-answer (the gateway's timeout test) is expected, not worth a traceback."""

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _StubHandler(BaseHTTPRequestHandler):
    server: InvokeStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.events.append({"function": self.path.split("/")[3], "event": event})
        query = event.get("queryStringParameters") or {}
        mode = query.get("mode", "")
        if mode == "error":
            self._reply(200, b'{"errorType": "ValueError", "errorMessage": "boom"}',
                        {"X-Amz-Function-Error": "Unhandled"})
        elif mode == "timeout":
            body = b'{"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out after 2.00 seconds"}'
            self._reply(200, body, {"X-Amz-Function-Error": "Unhandled"})
        elif mode == "throttle":
            self._reply(429, b'{"Type": "User", "message": "Rate Exceeded."}')
        elif mode == "sleep":
            time.sleep(float(query.get("seconds", "1")))
            self._reply(200, b'{"statusCode": 200, "body": "late"}')
        elif mode == "malformed":
            self._reply(200, b'"just a string"')
        elif mode == "binary":
            self._reply(200, json.dumps({"statusCode": 200, "isBase64Encoded": True, "body": "AAEC",
                                         "headers": {"Content-Type": "application/octet-stream"}}).encode())
        else:
            result = {
                "statusCode": 201 if mode == "created" else 200,
                "headers": {"Content-Type": "application/json", "X-Instance": self.server.name},
                "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
                "body": json.dumps({"instance": self.server.name, "event": event}),
            }
            self._reply(200, json.dumps(result).encode())


class DroppingHost:
    """A function host that dies under its requests: it reads each request, then drops the connection.

    ``partial`` sends the start of an answer first (status line, headers, a byte of
    body) so the gateway sees a connection lost *during* the answer. It keeps
    accepting connections, like a live host whose connection broke.
    """

    def __init__(self, name: str, partial: bool = False) -> None:
        self.name = name
        self.partial = partial
        self.requests: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if not data:
                    continue  # the gateway's probe: a connect, then nothing
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next((line.split(b":", 1)[1] for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length:")), b"0"))
                while len(body) < length:
                    body += connection.recv(65536)
                self.requests.append(head.split(b" ", 2)[1].decode())
                if self.partial:
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self.listener.close()


class GatewayThread:
    """A gateway serving on its own uvloop loop in a thread, on a free port."""

    def __init__(self, template: Path, registry_url: str, **config: Any) -> None:
        defaults = GatewayConfig(gateway_refresh_interval=0.2, gateway_register=False,
                                 gateway_access_log=False)
        self.config = replace(defaults, **config)
        directory = build_directory(registry_url, self.config)
        self.gateway = Gateway(load_routes(ROUTES_PATH), ApiMap.from_template(load_template(template)),
                               directory, self.config, template=template,
                               invoke_token=load_settings().invoke_token)
        self.loop = uvloop.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.port = self.loop.run_until_complete(self.gateway.serve("127.0.0.1", 0))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("gateway did not start")

    def refresh(self) -> None:
        """Make the gateway see the registry as it is now (the first call may join an older fetch)."""
        for _ in range(2):
            asyncio.run_coroutine_threadsafe(self.gateway.refresh_directory(), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def headers_all(self, method: str, path: str) -> list[tuple[str, str]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path)
            response = connection.getresponse()
            response.read()
            return response.getheaders()
        finally:
            connection.close()


@contextmanager
def gateway_thread(template: Path, registry_url: str, **config: Any) -> Iterator[GatewayThread]:
    gateway = GatewayThread(template, registry_url, **config)
    try:
        yield gateway
    finally:
        gateway.stop()


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


HOST_TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.11
    Timeout: 5
    MemorySize: 256
Resources:
  PayfnApi:
    Type: AWS::Serverless::Api
    Properties:
      StageName: v1
  EchoFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/
      Handler: proxy.echo
      Tags: {payfn:service: INGEST-SERVICE}
      Events:
        Get:
          Type: Api
          Properties: {RestApiId: !Ref PayfnApi, Path: "/payments/{paymentId}", Method: GET}
  SlowAuthorizeFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/
      Handler: proxy.slow
      Tags: {payfn:service: INGEST-SERVICE}
      Events:
        Authorize:
          Type: Api
          Properties: {RestApiId: !Ref PayfnApi, Path: /payments/authorize, Method: POST}
  NoopFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/
      Handler: proxy.noop
      Tags: {payfn:service: INGEST-SERVICE}
      Events:
        Noop:
          Type: Api
          Properties: {RestApiId: !Ref PayfnApi, Path: /payments/noop, Method: GET}
"""

HOST_FUNCTIONS = '''
"""Proxy-integration handlers for gateway tests and the gateway benchmark."""

import json
import os
import time


def echo(event, context):
    body = {"path": event["path"], "pathParameters": event["pathParameters"],
            "requestId": context.aws_request_id, "pid": os.getpid()}
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}


def noop(event, context):
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "{}"}


def slow(event, context):
    """Long enough that a host killed under load has requests in flight."""
    time.sleep(0.05)
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"pid": os.getpid(), "host": os.getppid(), "body": event["body"]})}
'''


def write_host_template(folder: Path) -> Path:
    """A template with real handler code for a real function host (``infra.runtime.host``)."""
    (folder / "functions").mkdir(parents=True, exist_ok=True)
    (folder / "functions" / "proxy.py").write_text(HOST_FUNCTIONS, encoding="utf-8")
    path = folder / "template.yaml"
    path.write_text(HOST_TEMPLATE, encoding="utf-8")
    return path


def _drain(stream: IO[str]) -> None:
    """Read a child's stdout to its end so its log lines never fill the pipe and block it."""
    for _ in stream:
        pass


@contextmanager
def function_host(template: Path, service: str, registry_url: str | None = None,
                  env: dict[str, str] | None = None) -> Iterator[tuple[Any, int]]:
    """A real function host process on a free port (``env``: extra variables); yields (process, port)."""
    command = [sys.executable, "-m", "infra.runtime.host", "--service", service, "--port", "0",
               "--template", str(template)]
    command += ["--registry-url", registry_url] if registry_url else ["--no-register"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, **(env or {})})
    try:
        port = 0
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("LISTENING"):
                port = int(line.strip().rsplit(":", 1)[1])
                break
        if not port:
            raise RuntimeError(f"function host exited with {process.wait(5)}")
        threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
        yield process, port
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
