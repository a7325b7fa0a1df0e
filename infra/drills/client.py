"""The drills' client: every request goes through the gateway, every answer is remembered.

The consistency check compares the database with what clients were told, so the
client keeps, per merchant and idempotency key, the payment a 2xx answer named,
and per payment the last status a 2xx answer reported. Answers that were not 2xx
are counted per status; a request whose outcome the client cannot know (a timeout,
a 5xx after sending) is "ambiguous" until a retry with the same idempotency key
answers 2xx, which is exactly how a payment client is meant to recover.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: HTTP statuses a client may safely retry with the same idempotency key.
RETRYABLE = frozenset({429, 502, 503, 504})
CONNECTION_ERROR = 599


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class PaymentSeen:
    """One payment as the client knows it from 2xx answers."""

    merchant_id: str
    idempotency_key: str
    amount: int
    currency: str
    status: str


class ClientLedger:
    """What clients were told (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.payments: dict[str, PaymentSeen] = {}
        self.by_key: dict[tuple[str, str], str] = {}
        self.statuses: Counter[str] = Counter()
        self.ambiguous: set[tuple[str, str]] = set()
        #: Payments whose capture/refund got no definite answer (5xx, timeout): either status is right.
        self.ambiguous_transitions: set[str] = set()
        self.latencies: list[float] = []

    def note(self, operation: str, answer: Answer) -> None:
        with self._lock:
            self.statuses[f"{operation} {answer.status}"] += 1
            self.latencies.append(answer.seconds)

    def authorized(self, merchant: str, key: str, amount: int, currency: str, answer: Answer) -> None:
        with self._lock:
            if answer.ok:
                payment_id = answer.body["paymentId"]
                self.by_key[(merchant, key)] = payment_id
                self.payments[payment_id] = PaymentSeen(merchant, key, amount, currency,
                                                        answer.body["status"])
                self.ambiguous.discard((merchant, key))
            elif answer.status >= 500 and (merchant, key) not in self.by_key:
                self.ambiguous.add((merchant, key))

    def transitioned(self, payment_id: str, answer: Answer) -> None:
        with self._lock:
            if answer.ok:
                self.payments[payment_id].status = answer.body["status"]
                self.ambiguous_transitions.discard(payment_id)
            elif answer.status >= 500:
                self.ambiguous_transitions.add(payment_id)

    def merchants(self) -> set[str]:
        with self._lock:
            return {p.merchant_id for p in self.payments.values()} | {m for m, _ in self.ambiguous}

    def count(self, prefix: str) -> int:
        """Answers whose ``"<operation> <status>"`` starts with ``prefix`` (e.g. ``"authorize 5"``)."""
        with self._lock:
            return sum(n for name, n in self.statuses.items() if name.startswith(prefix))


class GatewayClient:
    """HTTP/1.1 keep-alive client to the gateway, one connection per thread."""

    def __init__(self, gateway_url: str, ledger: ClientLedger | None = None, timeout: float = 20.0) -> None:
        parts = urlsplit(gateway_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self.ledger = ledger or ClientLedger()
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def request(self, method: str, path: str, body: Any = None) -> Answer:
        """One request; a connection failure is answered as status 599 (never raises)."""
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                connection = self._connection()
                connection.request(method, path, body=payload, headers=headers)
                response = connection.getresponse()
                raw = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self._drop()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                # A keep-alive connection the server closed while idle: once more on a fresh one.
                self._drop()
                if attempt == 2:
                    return Answer(CONNECTION_ERROR, {"error": repr(error)}, time.perf_counter() - started)
            except OSError as error:
                self._drop()
                return Answer(CONNECTION_ERROR, {"error": repr(error)}, time.perf_counter() - started)
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"raw": raw[:200].decode(errors="replace")}
        return Answer(response.status, decoded if isinstance(decoded, dict) else {"value": decoded},
                      time.perf_counter() - started, {k.lower(): v for k, v in response.getheaders()})

    def get_json(self, path: str) -> Answer:
        return self.request("GET", path)

    def authorize(self, merchant: str, key: str | None = None, amount: int = 50000,
                  currency: str = "KRW") -> Answer:
        key = key or f"drill-{uuid.uuid4().hex}"
        answer = self.request("POST", "/api/payments/authorize",
                              {"merchantId": merchant, "amount": amount, "currency": currency,
                               "idempotencyKey": key})
        self.ledger.note("authorize", answer)
        self.ledger.authorized(merchant, key, amount, currency, answer)
        return answer

    def authorize_retrying(self, merchant: str, deadline: float, amount: int = 50000,
                           currency: str = "KRW") -> tuple[Answer, int]:
        """Authorize, retrying retryable answers with the SAME idempotency key until ``deadline``.

        Returns the last answer and how many attempts were retried: what a
        well-behaved payment client does when it cannot know whether it was charged.
        """
        key = f"drill-{uuid.uuid4().hex}"
        retries = 0
        while True:
            answer = self.authorize(merchant, key, amount, currency)
            if answer.status not in RETRYABLE | {CONNECTION_ERROR} or time.monotonic() >= deadline:
                return answer, retries
            retries += 1
            time.sleep(0.2)

    def capture(self, merchant: str, payment_id: str) -> Answer:
        answer = self.request("POST", f"/api/payments/capture/{payment_id}", {"merchantId": merchant})
        self.ledger.note("capture", answer)
        self.ledger.transitioned(payment_id, answer)
        return answer

    def refund(self, merchant: str, payment_id: str, reason: str = "drill refund") -> Answer:
        answer = self.request("POST", f"/api/payments/refund/{payment_id}",
                              {"merchantId": merchant, "reason": reason})
        self.ledger.note("refund", answer)
        self.ledger.transitioned(payment_id, answer)
        return answer

    def breaker(self) -> Answer:
        return self.get_json("/api/circuit-breaker/kafka-publisher")

    def close(self) -> None:
        self._drop()
