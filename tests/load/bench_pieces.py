"""A/B of payfn's hand-written pieces against the stock alternative (``python -m tests.load.bench pieces``).

- **http**: :class:`infra.net.server.HttpServer` on uvloop against uvicorn (httptools + uvloop)
  on a bare ASGI app, both answering a trivial 200 in a process of their own; wrk's closed loop,
  requests/s and the server process's CPU µs per request (``/proc`` utime + stime).
- **redis**: the rate limiter's token-bucket script by EVALSHA on a private redis-server:
  payfn's :class:`RawScript` against redis-py's ``Script`` with its Python RESP2 parser and with
  hiredis (when installed); µs per call (median of blocks) and client CPU µs per call.
- **validation**: the authorize body, payfn's ``parse_json_body`` + ``validate_authorize``
  against pydantic, alone and behind Powertools' resolver (``enable_validation``); µs per call,
  and the answer each gives an invalid body (the spec's error contract is payfn's).
- **kafka**: consuming a backlog on a private noida-db broker the event-source poller's way
  (batches of 100, a synchronous commit after each) with kafka-python and with confluent-kafka;
  records/s and this process's CPU µs per record (librdkafka's threads included); then, caught
  up, the idle cost of polling once per 200 ms (the poller's longest idle sleep): CPU % of a
  core in this process and in the broker (librdkafka fetches between polls, kafka-python not).

``PAYFN_BENCH_SECONDS`` sets each HTTP run (default 5); servers bind 127.0.0.1 on free ports.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import redis
import uvloop
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from confluent_kafka import Consumer, Producer
from kafka import KafkaConsumer
from payfn_shared.payments.api import create_app, request_json
from payfn_shared.payments.currencies import ISO_4217_CODES
from payfn_shared.payments.validation import ValidationConfig, parse_json_body, validate_authorize
from payfn_shared.platform.ratelimit import _LUA_BUCKET
from payfn_shared.platform.redis_client import create_redis, register_script
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr
from redis import _parsers
from redis.utils import HIREDIS_AVAILABLE

from infra.net.messages import Request, Response
from infra.net.server import HttpServer
from infra.stack.components import KafkaBroker
from infra.stack.kafka_admin import broker_ready, ensure_topics
from tests.load import rawload
from tests.load.bench_gateway import child_process, free_port, wait_http

BATCH = 100
DURATION = float(os.environ.get("PAYFN_BENCH_SECONDS", "5"))
ROOT = Path(__file__).resolve().parents[2]
HELLO = b'{"ok":true}'
AUTHORIZE_BODY = json.dumps({"merchantId": "m_bench", "amount": 1250, "currency": "EUR",
                             "idempotencyKey": "bench-key-0001"})
INVALID_BODY = json.dumps({"merchantId": "bad id!", "amount": 0, "currency": "XXY", "extra": 1})


def _serve_payfn() -> None:
    """The payfn server answering every request with a trivial 200 (run in a child process)."""
    async def hello(request: Request) -> Response:
        return Response(200, HELLO, [("Content-Type", "application/json")])

    async def main() -> None:
        port = await HttpServer(hello).start("127.0.0.1", 0)
        print(f"LISTENING http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


async def asgi_app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """The same trivial 200 as a bare ASGI app, for uvicorn."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": HELLO})


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process from ``/proc`` (its children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk_with_cpu(url: str, pid: int) -> dict[str, Any]:
    rawload.wrk(url, 1.0)
    before = _cpu_seconds(pid)
    figures = rawload.wrk(url, DURATION) or {}
    cpu = _cpu_seconds(pid) - before
    requests = max(1, int(figures.get("requests", 0)))
    return {"rps": figures.get("rps", 0.0), "p50_ms": figures.get("p50_ms"), "p99_ms": figures.get("p99_ms"),
            "errors": figures.get("errors", 0), "server_cpu_us_per_request": round(cpu / requests * 1e6, 1)}


def bench_http(folder: Path) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed"}
    python = sys.executable
    results: dict[str, Any] = {}
    with child_process([python, "-m", "tests.load.bench_pieces", "--serve-payfn"], log=folder / "payfn.log",
                       listening=True, cwd=ROOT) as (process, address):
        results["payfn HttpServer (uvloop)"] = _wrk_with_cpu(f"http://{address}/", process.pid)
    port = free_port()
    command = [python, "-m", "uvicorn", "tests.load.bench_pieces:asgi_app", "--host", "127.0.0.1",
               "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
               "--log-level", "warning", "--lifespan", "off"]
    with child_process(command, log=folder / "uvicorn.log", cwd=ROOT) as (process, _):
        wait_http(f"http://127.0.0.1:{port}/", process=process)
        results["uvicorn (httptools + uvloop)"] = _wrk_with_cpu(f"http://127.0.0.1:{port}/", process.pid)
    return results


def _per_call(body: Callable[[], Any], calls: int, blocks: int = 5) -> dict[str, float]:
    """Wall µs (median of ``blocks``) and this process's CPU µs per call, after a warm-up."""
    for _ in range(min(500, calls)):
        body()
    per_block = max(1, calls // blocks)
    timings = []
    cpu_start = time.process_time()
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(per_block):
            body()
        timings.append((time.perf_counter() - start) / per_block)
    cpu = (time.process_time() - cpu_start) / (per_block * blocks)
    return {"us_per_call": round(statistics.median(timings) * 1e6, 2), "cpu_us_per_call": round(cpu * 1e6, 2)}


def _redis_py(url: str, parser: str) -> redis.Redis:
    client = create_redis(url)
    client.connection_pool.connection_kwargs["parser_class"] = getattr(_parsers, parser)
    return client


def bench_redis(folder: Path, calls: int) -> dict[str, Any]:
    binary = shutil.which("redis-server")
    if binary is None:
        return {"skipped": "redis-server is not installed"}
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(folder)]
    with child_process(command, log=folder / "redis.log"):
        url = f"redis://127.0.0.1:{port}/0"
        probe = create_redis(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        keys, args = ["bench:bucket"], [10**9, 3_600_000, 1]
        raw = register_script(create_redis(url), _LUA_BUCKET)
        rows: dict[str, Callable[[], Any]] = {"payfn RawScript (own RESP2)":
                                              lambda: raw(keys=keys, args=args)}
        python_parser = _redis_py(url, "_RESP2Parser").register_script(_LUA_BUCKET)
        rows["redis-py Script, Python parser"] = lambda: python_parser(keys=keys, args=args)
        if HIREDIS_AVAILABLE:
            hiredis_parser = _redis_py(url, "_HiredisParser").register_script(_LUA_BUCKET)
            rows["redis-py Script, hiredis"] = lambda: hiredis_parser(keys=keys, args=args)
        results: dict[str, Any] = {row: _per_call(body, calls) for row, body in rows.items()}
        if not HIREDIS_AVAILABLE:
            results["redis-py Script, hiredis"] = "hiredis not installed"
        probe.close()
        return results


def _iso_currency(value: str) -> str:
    if value not in ISO_4217_CODES:
        raise ValueError("must be an active ISO 4217 code (e.g. USD)")
    return value


class AuthorizeBody(BaseModel):
    """The authorize body as a pydantic model, the spec's rules as constraints."""

    model_config = ConfigDict(extra="forbid", strict=True)

    merchantId: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    amount: Annotated[StrictInt, Field(ge=1, le=10_000_000_000)]
    currency: Annotated[StrictStr, AfterValidator(_iso_currency)]
    idempotencyKey: Annotated[StrictStr, Field(pattern=r"^[\x20-\x7e]{1,64}$")]


def _rest_event(body: str) -> dict[str, Any]:
    return {"resource": "/payments/authorize", "path": "/payments/authorize", "httpMethod": "POST",
            "headers": {"content-type": "application/json"}, "multiValueHeaders": {},
            "queryStringParameters": None, "multiValueQueryStringParameters": None,
            "pathParameters": None, "stageVariables": None, "isBase64Encoded": False, "body": body,
            "requestContext": {"requestId": "bench", "stage": "prod", "path": "/payments/authorize",
                               "httpMethod": "POST", "resourcePath": "/payments/authorize"}}


def _resolvers(config: ValidationConfig) -> tuple[APIGatewayRestResolver, APIGatewayRestResolver]:
    """payfn's resolver with its validator, and Powertools' ``enable_validation`` with the model."""
    payfn = create_app()

    @payfn.post("/payments/authorize")
    def authorize_payfn() -> dict[str, Any]:
        return validate_authorize(request_json(payfn.current_event, config), config).canonical()

    powertools = APIGatewayRestResolver(enable_validation=True)

    @powertools.post("/payments/authorize")
    def authorize_powertools(body: AuthorizeBody) -> dict[str, Any]:
        return body.model_dump()

    return payfn, powertools


def _answer(app: APIGatewayRestResolver, body: str) -> str:
    reply = app.resolve(_rest_event(body), None)
    return f"{reply['statusCode']} {reply['body'][:100]}"


def bench_validation(calls: int) -> dict[str, Any]:
    config = ValidationConfig()

    def payfn_alone() -> Any:
        data = parse_json_body(AUTHORIZE_BODY, "application/json", max_bytes=config.max_body_bytes)
        return validate_authorize(data, config)

    payfn, powertools = _resolvers(config)
    event = _rest_event(AUTHORIZE_BODY)
    parsed = json.loads(AUTHORIZE_BODY)
    results: dict[str, Any] = {
        "payfn validate_authorize (dict)": _per_call(lambda: validate_authorize(parsed, config), calls),
        "pydantic model_validate (dict)": _per_call(lambda: AuthorizeBody.model_validate(parsed), calls),
        "payfn parse_json_body + validate_authorize": _per_call(payfn_alone, calls),
        "pydantic model_validate_json": _per_call(lambda: AuthorizeBody.model_validate_json(AUTHORIZE_BODY),
                                                  calls),
        "resolver + payfn validator": _per_call(lambda: payfn.resolve(event, None), calls),
        "resolver + Powertools enable_validation": _per_call(lambda: powertools.resolve(event, None), calls),
        "invalid body answer, payfn": _answer(payfn, INVALID_BODY),
        "invalid body answer, Powertools": _answer(powertools, INVALID_BODY),
    }
    return results


def _drain(take: Callable[[], int], commit: Callable[[], Any], records: int, cpu: float) -> dict[str, Any]:
    """Take batches (committing each) until ``records`` came: records/s from the first batch on,
    CPU µs per record since ``cpu`` (the consumer's creation, so its background work counts)."""
    seen, started = 0, 0.0
    deadline = time.monotonic() + 120
    while seen < records and time.monotonic() < deadline:
        count = take()
        if count and not started:
            started = time.perf_counter()
        if count:
            seen += count
            commit()
    wall = time.perf_counter() - started
    return {"records": seen, "records_per_s_from_first_batch": round(seen / max(wall, 1e-9)),
            "cpu_us_per_record": round((time.process_time() - cpu) / max(1, seen) * 1e6, 1)}


#: How long a caught-up consumer is watched idling, in seconds.
IDLE_SECONDS = 3.0


def _idle(poll_once: Callable[[], Any], broker_pid: int) -> dict[str, float]:
    """CPU % of a core in this process and the broker while a caught-up consumer polls every 200 ms."""
    cpu, broker, started = time.process_time(), _cpu_seconds(broker_pid), time.monotonic()
    while time.monotonic() - started < IDLE_SECONDS:
        poll_once()
        time.sleep(0.2)
    wall = time.monotonic() - started
    return {"idle_cpu_percent": round((time.process_time() - cpu) / wall * 100, 1),
            "idle_broker_cpu_percent": round((_cpu_seconds(broker_pid) - broker) / wall * 100, 1)}


def _consume_kafka_python(bootstrap: str, topic: str, records: int, broker_pid: int) -> dict[str, Any]:
    cpu = time.process_time()
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], group_id=f"bench-kp-{topic}",
                             enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=BATCH,
                             fetch_max_wait_ms=100, check_crcs=False)
    consumer.subscribe([topic])

    def take() -> int:
        return sum(len(batch) for batch in consumer.poll(timeout_ms=500, max_records=BATCH).values())

    try:
        drained = _drain(take, consumer.commit, records, cpu)
        return {**drained, **_idle(lambda: consumer.poll(timeout_ms=3), broker_pid)}
    finally:
        consumer.close()


def _consume_confluent(bootstrap: str, topic: str, records: int, broker_pid: int) -> dict[str, Any]:
    cpu = time.process_time()
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-ck-{topic}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": 100, "log.connection.close": False})
    consumer.subscribe([topic])

    def take() -> int:
        return sum(1 for message in consumer.consume(BATCH, 0.5) if message.error() is None)

    try:
        drained = _drain(take, lambda: consumer.commit(asynchronous=False), records, cpu)
        return {**drained, **_idle(lambda: consumer.consume(BATCH, 0.003), broker_pid)}
    finally:
        consumer.close()


def bench_kafka(folder: Path, records: int) -> dict[str, Any]:
    bootstrap = f"127.0.0.1:{free_port()}"
    command = [str(KafkaBroker.binary()), "start", "--data-dir", str(folder / "kafka"), "--host", "127.0.0.1",
               "--only", "kafka", "--kafka-port", bootstrap.rsplit(":", 1)[1]]
    with child_process(command, log=folder / "kafka.log") as (broker, _):
        deadline = time.monotonic() + 60
        while not broker_ready(bootstrap):
            if time.monotonic() > deadline:
                raise RuntimeError(f"noida-db did not answer on {bootstrap}")
            time.sleep(0.2)
        topic = "bench-pieces"
        ensure_topics(bootstrap, 1, (topic,))
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log.connection.close": False})
        value = json.dumps({"paymentId": "0" * 36, "merchantId": "m_bench", "amount": 1250,
                            "currency": "EUR", "status": "AUTHORIZED"}).encode()
        for _ in range(records):
            producer.produce(topic, value)
            producer.poll(0)
        producer.flush(30)
        results = {"kafka-python": _consume_kafka_python(bootstrap, topic, records, broker.pid),
                   "confluent-kafka": _consume_confluent(bootstrap, topic, records, broker.pid)}
        subprocess.run([str(KafkaBroker.binary()), "stop", "kafka", "--data-dir", str(folder / "kafka")],
                       capture_output=True, timeout=30, check=False)
        return results


def run(calls: int = 5000, records: int = 20000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        results = {"validation": bench_validation(calls), "redis": bench_redis(folder, calls),
                   "http": bench_http(folder), "kafka": bench_kafka(folder, records)}
    for section, rows in results.items():
        for row, values in rows.items():
            print(f"{section:<10} {row:<44} {values}")
    return results


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-payfn"]:
        _serve_payfn()
    else:
        from tests.load.bench import render

        print(render({"pieces": run()}))
