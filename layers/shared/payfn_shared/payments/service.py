"""The payments use cases handlers call: authorize, capture, refund, get.

Each use case is one database transaction that changes the payment, writes its
ledger line and its outbox row together (``SELECT … FOR UPDATE`` serializes
concurrent transitions of one payment); the event is published only after the
commit, through the breaker, and a publish failure never changes the answer.
Authorize checks idempotency before the rate limit, so retries never spend quota;
with the MariaDB idempotency store a new key runs in ONE transaction.

Design notes (order of the checks, the one-transaction path): docs/PAYMENTS.md#payments-service
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from payfn_shared.payments import repository as repo
from payfn_shared.payments.domain import (
    AUTHORIZE_EVENT,
    AUTHORIZE_MESSAGE,
    CAPTURE,
    FOUND_MESSAGE,
    REFUND,
    Payment,
    PaymentStatus,
    Transition,
    check_transition,
    ledger_entry_for,
    payment_body,
)
from payfn_shared.payments.events import build_event
from payfn_shared.payments.outbox import OutboxRecord, insert_event
from payfn_shared.payments.publisher import get_publisher, reset_publisher
from payfn_shared.payments.validation import AuthorizeRequest, CaptureRequest, RefundRequest, is_payment_id
from payfn_shared.platform.config import load_dataclass
from payfn_shared.platform.db import Cursor, Database, get_database, is_duplicate_key, reset_database
from payfn_shared.platform.errors import (
    ApiError,
    DependencyUnavailable,
    IdempotencyKeyReused,
    NotFound,
    RateLimitExceeded,
)
from payfn_shared.platform.idempotency import (
    REPLAY_HEADER,
    STORE_REDIS,
    IdempotencyConfig,
    IdempotencyStore,
    MariaDbIdempotencyStore,
    RedisIdempotencyStore,
    StoredResponse,
    request_hash,
    resolve_existing,
    utc_now,
)
from payfn_shared.platform.ratelimit import RateLimiter
from payfn_shared.platform.redis_client import get_redis

log = logging.getLogger(__name__)

ACTION_AUTHORIZE = "authorize"
ACTION_CAPTURE = "capture"
ACTION_REFUND = "refund"


class RateDecision(Protocol):
    """What the service reads of ``payfn_shared.platform.ratelimit.RateLimitDecision``."""

    allowed: bool
    limit: int

    def headers(self) -> dict[str, str]: ...


class RateLimiterLike(Protocol):
    def check(self, merchant_id: str, action: str) -> RateDecision: ...


class PublisherLike(Protocol):
    def publish_and_record(self, records: list[OutboxRecord], database: Database) -> Any: ...


@dataclass(frozen=True)
class Reply:
    """A use case's answer: what the handler turns into an HTTP response."""

    status_code: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _requested_payment(req: AuthorizeRequest, req_hash: str, payment_id: str, now: datetime) -> Payment:
    """The new payment an authorize request creates (both authorize paths)."""
    return Payment(payment_id, req.merchant_id, req.amount, req.currency, PaymentStatus.REQUESTED,
                   req.idempotency_key, req_hash, now, now)


def _insert_authorized_event(cur: Cursor, payment: Payment, now: datetime) -> OutboxRecord:
    """The outbox row of a new payment's PAYMENT_AUTHORIZED event, in the caller's transaction."""
    event = build_event(
        AUTHORIZE_EVENT, payment_id=payment.id, merchant_id=payment.merchant_id,
        status=payment.status.value, amount=payment.amount, currency=payment.currency, occurred_at=now,
    )
    return insert_event(cur, event, now)


class _KeyHasPayment(Exception):
    """Inside authorize's one transaction: the key's payment exists though its record does not."""


class PaymentService:
    """Payments use cases over one database, idempotency store, rate limiter and publisher."""

    def __init__(
        self,
        database: Database,
        idempotency: IdempotencyStore,
        rate_limiter: RateLimiterLike,
        publisher: PublisherLike,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.db = database
        self.idempotency = idempotency
        self.rate_limiter = rate_limiter
        self.publisher = publisher
        self.clock = clock

    # -- checks ---------------------------------------------------------------------------------

    def _rate_limit(self, merchant_id: str, action: str) -> dict[str, str]:
        decision = self.rate_limiter.check(merchant_id, action)
        headers = decision.headers()
        if not decision.allowed:
            raise RateLimitExceeded(
                f"Rate limit of {decision.limit} {action} requests exceeded for merchant {merchant_id}",
                headers=headers,
            )
        return headers

    def _publish(self, record: OutboxRecord) -> None:
        self.publisher.publish_and_record([record], self.db)

    # -- authorize ------------------------------------------------------------------------------

    def authorize(self, req: AuthorizeRequest) -> Reply:
        req_hash = request_hash(req.canonical())
        payment_id = str(uuid.uuid4())
        now = self.clock()
        store = self.idempotency
        if isinstance(store, MariaDbIdempotencyStore):
            try:
                done = self.db.run_in_transaction(
                    lambda cur: self._authorize_in_one_tx(cur, store, req, req_hash, payment_id, now)
                )
            except _KeyHasPayment:
                done = None
            if done is not None:
                reply, record = done
                self._publish(record)
                return reply
        existing = self.idempotency.claim(req.merchant_id, req.idempotency_key, req_hash, payment_id, now)
        if existing is not None:
            stored = resolve_existing(existing, req_hash)
            return Reply(stored.status_code, stored.body, {REPLAY_HEADER: "true"})
        try:
            headers = self._rate_limit(req.merchant_id, ACTION_AUTHORIZE)
            reply, record = self.db.run_in_transaction(
                lambda cur: self._authorize_tx(cur, req, req_hash, payment_id, now)
            )
        except BaseException:
            self._release(req, req_hash)
            raise
        if not self.idempotency.transactional:
            self._complete_after_commit(req, req_hash, reply, now)
        if record is not None:
            self._publish(record)
        return Reply(reply.status_code, reply.body, {**reply.headers, **headers})

    def _authorize_in_one_tx(
        self, cur: Cursor, store: MariaDbIdempotencyStore, req: AuthorizeRequest, req_hash: str,
        payment_id: str, now: datetime,
    ) -> tuple[Reply, OutboxRecord] | None:
        """Authorize's usual case in ONE transaction: record, rate limit, payment, outbox.

        The COMPLETED idempotency record is inserted first: its row lock makes a
        concurrent request for the key wait, and a key that already has a record
        returns None (nothing written) for :meth:`authorize`'s general path to answer.
        The rate limiter is asked only then, so a replay never spends quota; a
        rate-limited request rolls the record back with everything else.
        """
        payment = _requested_payment(req, req_hash, payment_id, now)
        body = payment_body(payment, [], AUTHORIZE_MESSAGE)
        if not store.insert_completed(cur, req.merchant_id, req.idempotency_key, req_hash,
                                      StoredResponse(200, body), now):
            return None
        headers = self._rate_limit(req.merchant_id, ACTION_AUTHORIZE)
        try:
            repo.insert_payment(cur, payment)
        except Exception as exc:
            if is_duplicate_key(exc):
                # The record had expired and been purged, the payment had not: the
                # general path answers from the payment (rolling this back first).
                raise _KeyHasPayment from exc
            raise
        return Reply(200, body, headers), _insert_authorized_event(cur, payment, now)

    def _complete(self, cur: Cursor, req: AuthorizeRequest, req_hash: str, body: dict[str, Any],
                  now: datetime) -> None:
        """Inside the transaction, for stores that can join it (the MariaDB store)."""
        if self.idempotency.transactional:
            response = StoredResponse(200, body)
            self.idempotency.complete(req.merchant_id, req.idempotency_key, req_hash, response, now, cur)

    def _complete_after_commit(
        self, req: AuthorizeRequest, req_hash: str, reply: Reply, now: datetime
    ) -> None:
        """For other stores: the payment committed, so the record may now say so.

        A failure here is not the client's problem: the claim expires and the
        payment's unique key answers the retry with a replay.
        """
        try:
            self.idempotency.complete(
                req.merchant_id, req.idempotency_key, req_hash, StoredResponse(200, reply.body), now
            )
        except ApiError as exc:
            log.warning("could not complete the idempotency record after commit: %s", exc)

    def _release(self, req: AuthorizeRequest, req_hash: str) -> None:
        try:
            self.idempotency.release(req.merchant_id, req.idempotency_key, req_hash)
        except DependencyUnavailable as exc:
            log.warning("could not release idempotency claim (it expires by itself): %s", exc)

    def _authorize_tx(
        self, cur: Cursor, req: AuthorizeRequest, req_hash: str, payment_id: str, now: datetime
    ) -> tuple[Reply, OutboxRecord | None]:
        payment = _requested_payment(req, req_hash, payment_id, now)
        try:
            repo.insert_payment(cur, payment)
        except Exception as exc:
            if not is_duplicate_key(exc):
                raise
            return self._answer_from_existing_payment(cur, req, req_hash, now), None
        record = _insert_authorized_event(cur, payment, now)
        body = payment_body(payment, [], AUTHORIZE_MESSAGE)
        self._complete(cur, req, req_hash, body, now)
        return Reply(200, body), record

    def _answer_from_existing_payment(
        self, cur: Cursor, req: AuthorizeRequest, req_hash: str, now: datetime
    ) -> Reply:
        """The payment's unique key had the last word (the record expired or was lost)."""
        existing = repo.find_by_idempotency_key(cur, req.merchant_id, req.idempotency_key)
        if existing is None:
            raise DependencyUnavailable("Payment vanished while resolving an idempotency conflict")
        if existing.request_hash != req_hash:
            raise IdempotencyKeyReused(payment_id=existing.id)
        body = payment_body(existing, repo.ledger_entries(cur, existing.id), AUTHORIZE_MESSAGE)
        self._complete(cur, req, req_hash, body, now)
        return Reply(200, body, {REPLAY_HEADER: "true"})

    # -- capture / refund -----------------------------------------------------------------------

    def capture(self, payment_id: str, req: CaptureRequest) -> Reply:
        return self._transition(payment_id, req.merchant_id, CAPTURE, ACTION_CAPTURE, None)

    def refund(self, payment_id: str, req: RefundRequest) -> Reply:
        return self._transition(payment_id, req.merchant_id, REFUND, ACTION_REFUND, req.reason)

    def _transition(
        self, payment_id: str, merchant_id: str, transition: Transition, action: str, reason: str | None
    ) -> Reply:
        if not is_payment_id(payment_id):
            raise NotFound(payment_id=None)
        headers = self._rate_limit(merchant_id, action)
        reply, record = self.db.run_in_transaction(
            lambda cur: self._transition_tx(cur, payment_id, merchant_id, transition, reason)
        )
        self._publish(record)
        return Reply(reply.status_code, reply.body, headers)

    def _transition_tx(
        self, cur: Cursor, payment_id: str, merchant_id: str, transition: Transition, reason: str | None
    ) -> tuple[Reply, OutboxRecord]:
        now = self.clock()
        payment = repo.find_payment(cur, payment_id, for_update=True)
        if payment is None or payment.merchant_id != merchant_id:
            raise NotFound(payment_id=payment_id)
        check_transition(payment, transition)
        repo.update_status(cur, payment.id, transition.target, now)
        try:
            repo.insert_ledger_entry(cur, payment, ledger_entry_for(payment, transition), now)
        except Exception as exc:
            if is_duplicate_key(exc):
                raise transition.conflict(
                    "This transition was already recorded", payment_id=payment.id
                ) from exc
            raise
        moved = replace(payment, status=transition.target, updated_at=now)
        event = build_event(
            transition.event_type, payment_id=moved.id, merchant_id=moved.merchant_id,
            status=moved.status.value, amount=moved.amount, currency=moved.currency, occurred_at=now,
            reason=reason,
        )
        record = insert_event(cur, event, now)
        body = payment_body(moved, repo.ledger_entries(cur, moved.id), transition.message)
        return Reply(200, body), record

    # -- read -----------------------------------------------------------------------------------

    def get(self, payment_id: str, merchant_id: str) -> Reply:
        if not is_payment_id(payment_id):
            raise NotFound(payment_id=None)

        def read(cur: Cursor) -> Reply:
            payment = repo.find_payment(cur, payment_id)
            if payment is None or payment.merchant_id != merchant_id:
                raise NotFound(payment_id=payment_id)
            return Reply(200, payment_body(payment, repo.ledger_entries(cur, payment.id), FOUND_MESSAGE))

        return self.db.run_in_transaction(read)


_service: PaymentService | None = None
_service_lock = threading.Lock()


def get_payment_service() -> PaymentService:
    """The process-wide service, wired to the configured database, Redis and Kafka."""
    global _service
    with _service_lock:
        if _service is None:
            database = get_database()
            config: IdempotencyConfig = load_dataclass(IdempotencyConfig)
            store: IdempotencyStore
            if config.idempotency_store == STORE_REDIS:
                store = RedisIdempotencyStore(get_redis(), config)
            else:
                store = MariaDbIdempotencyStore(database, config)
            _service = PaymentService(database, store, RateLimiter(), get_publisher())
        return _service


def reset_payment_service() -> None:
    """Forget the cached service and its database and publisher (tests that re-point the stack)."""
    global _service
    with _service_lock:
        _service = None
    reset_database()
    reset_publisher()
