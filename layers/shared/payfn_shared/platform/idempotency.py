"""Idempotency of payment requests (merchant + idempotencyKey), Powertools style.

Protocol: ``claim`` (an IN_PROGRESS record; of N concurrent requests exactly one
wins the INSERT) → ``complete`` with the response → ``release`` if the work fails;
a live record is answered by :func:`resolve_existing` (replay, 422 or 409). The
MariaDB store completes inside the payment's transaction and offers authorize a
one-transaction path (:meth:`MariaDbIdempotencyStore.insert_completed`). Expired
records (default 24 h) are taken over; the ``payment`` unique key keeps the last
word. Persistence is pluggable (:class:`IdempotencyStore`,
``PAYFN_IDEMPOTENCY_STORE``: MariaDB or :class:`RedisIdempotencyStore`).

Design notes: docs/PAYMENTS.md#idempotency
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

import redis

from payfn_shared.platform.config import ConfigError, load_dataclass
from payfn_shared.platform.db import Cursor, Database, is_duplicate_key
from payfn_shared.platform.errors import DependencyUnavailable, IdempotencyKeyReused, RequestInProgress
from payfn_shared.platform.redis_client import register_script

REPLAY_HEADER = "Idempotent-Replayed"
REDIS_KEY_PREFIX = "payfn:idem:"
#: How many times a claim retries after losing a race on an expired record.
MAX_CLAIM_ROUNDS = 3
STORE_MARIADB = "mariadb"
STORE_REDIS = "redis"
STORES = (STORE_MARIADB, STORE_REDIS)


class RecordStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


@dataclass(frozen=True)
class IdempotencyConfig:
    """Expiries (env ``PAYFN_IDEMPOTENCY_TTL_SECONDS``, ``PAYFN_IDEMPOTENCY_IN_PROGRESS_SECONDS``).

    The in-progress expiry must exceed the function timeout, otherwise a slow
    first request could be overtaken by its own retry.
    """

    idempotency_ttl_seconds: int = 86_400
    idempotency_in_progress_seconds: int = 30
    idempotency_store: str = "mariadb"

    def validate(self) -> None:
        if self.idempotency_ttl_seconds < 1 or self.idempotency_in_progress_seconds < 1:
            raise ConfigError("PAYFN_IDEMPOTENCY_*_SECONDS must be >= 1")
        if self.idempotency_store not in STORES:
            raise ConfigError(f"PAYFN_IDEMPOTENCY_STORE must be one of {', '.join(STORES)}")


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: dict[str, Any]


@dataclass(frozen=True)
class IdempotencyRecord:
    merchant_id: str
    idempotency_key: str
    request_hash: str
    status: RecordStatus
    payment_id: str | None
    response: StoredResponse | None
    in_progress_until: datetime
    expires_at: datetime

    def is_live(self, now: datetime) -> bool:
        """Still binding at ``now`` (otherwise a new claim may take it over)."""
        if self.expires_at <= now:
            return False
        return self.status is RecordStatus.COMPLETED or self.in_progress_until > now


def request_hash(canonical_body: dict[str, Any]) -> str:
    """SHA-256 of the body with sorted keys, so field order does not matter."""
    encoded = json.dumps(canonical_body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


def utc_now() -> datetime:
    """Naive UTC with millisecond precision, matching DATETIME(3) columns exactly."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def resolve_existing(record: IdempotencyRecord, req_hash: str) -> StoredResponse:
    """The answer to a request whose key is held by ``record``: a replay, or 409 / 422."""
    if record.request_hash != req_hash:
        raise IdempotencyKeyReused(payment_id=record.payment_id)
    if record.status is RecordStatus.IN_PROGRESS or record.response is None:
        raise RequestInProgress(payment_id=record.payment_id)
    return record.response


class IdempotencyStore(ABC):
    """Where idempotency records live.

    ``transactional`` stores complete inside the caller's database transaction
    (``cursor``); the others are completed by the caller after its commit, so a
    stored response never describes a payment that did not commit.
    """

    transactional: ClassVar[bool] = False

    def __init__(self, config: IdempotencyConfig | None = None) -> None:
        self.config = config or load_dataclass(IdempotencyConfig)

    @abstractmethod
    def claim(
        self, merchant_id: str, key: str, req_hash: str, payment_id: str, now: datetime
    ) -> IdempotencyRecord | None:
        """Take the key: None if this request now owns it, else the live record holding it."""

    @abstractmethod
    def complete(
        self,
        merchant_id: str,
        key: str,
        req_hash: str,
        response: StoredResponse,
        now: datetime,
        cursor: Cursor | None = None,
    ) -> None:
        """Store the final response. Raises RequestInProgress if the claim was lost meanwhile."""

    @abstractmethod
    def release(self, merchant_id: str, key: str, req_hash: str) -> None:
        """Give up a claim whose work failed (only our own IN_PROGRESS claim is removed)."""


class MariaDbIdempotencyStore(IdempotencyStore):
    """Records in ``idempotency_record``; completion commits with the payment."""

    transactional = True

    def __init__(self, database: Database, config: IdempotencyConfig | None = None) -> None:
        super().__init__(config)
        self.database = database

    def claim(
        self, merchant_id: str, key: str, req_hash: str, payment_id: str, now: datetime
    ) -> IdempotencyRecord | None:
        """Each step is one autocommit statement (one round trip, locks held for one statement).

        The usual case is a single INSERT. Losers of a race read the winner's record;
        only an expired record is taken over, by a guarded UPDATE that one claimant wins.
        """
        in_progress_until = now + timedelta(seconds=self.config.idempotency_in_progress_seconds)
        expires_at = now + timedelta(seconds=self.config.idempotency_ttl_seconds)
        values = (req_hash, payment_id, now, in_progress_until, expires_at)
        for _ in range(MAX_CLAIM_ROUNDS):
            try:
                self.database.execute(
                    "INSERT INTO idempotency_record (merchant_id, idempotency_key, request_hash, status,"
                    " payment_id, created_at, in_progress_until, expires_at)"
                    " VALUES (%s, %s, %s, 'IN_PROGRESS', %s, %s, %s, %s)",
                    (merchant_id, key, *values),
                )
                return None
            except Exception as exc:
                if not is_duplicate_key(exc):
                    raise
            existing = self.read(merchant_id, key)
            if existing is None:
                continue  # released between our INSERT and our read: insert again
            if existing.is_live(now):
                return existing
            if self.database.execute(
                "UPDATE idempotency_record SET request_hash = %s, status = 'IN_PROGRESS', payment_id = %s,"
                " response_status = NULL, response_body = NULL, created_at = %s, in_progress_until = %s,"
                " expires_at = %s WHERE merchant_id = %s AND idempotency_key = %s"
                " AND (expires_at <= %s OR (status = 'IN_PROGRESS' AND in_progress_until <= %s))",
                (*values, merchant_id, key, now, now),
            ):
                return None
        raise RequestInProgress()

    def _completed_columns(self, response: StoredResponse, now: datetime) -> tuple[Any, int, str, datetime]:
        """payment_id, response_status, response_body, expires_at of a COMPLETED record."""
        return (response.body.get("paymentId"), response.status_code,
                json.dumps(response.body, separators=(",", ":")),
                now + timedelta(seconds=self.config.idempotency_ttl_seconds))

    def insert_completed(self, cursor: Cursor, merchant_id: str, key: str, req_hash: str,
                         response: StoredResponse, now: datetime) -> bool:
        """Write the COMPLETED record in the caller's transaction; False if the key has a record.

        Authorize's one-transaction path (see ``PaymentService.authorize``): the record
        is claimed and completed by one INSERT that commits with the payment, so a
        request that dies mid-way leaves no claim behind. A concurrent request for the
        same key waits on this row's lock and then finds the committed record (or,
        after a rollback, none). A duplicate key means a record exists (live, expired
        or in progress): the caller rolls back and answers through :meth:`claim`.
        """
        payment_id, status, body, expires_at = self._completed_columns(response, now)
        try:
            cursor.execute(
                "INSERT INTO idempotency_record (merchant_id, idempotency_key, request_hash, status,"
                " payment_id, response_status, response_body, created_at, in_progress_until, expires_at)"
                " VALUES (%s, %s, %s, 'COMPLETED', %s, %s, %s, %s, %s, %s)",
                (merchant_id, key, req_hash, payment_id, status, body, now, now, expires_at),
            )
        except Exception as exc:
            if is_duplicate_key(exc):
                return False
            raise
        return True

    def read(self, merchant_id: str, key: str) -> IdempotencyRecord | None:
        """The record for merchant + key, whatever its state (None if there is none)."""
        found = self.database.query(
            "SELECT request_hash, status, payment_id, response_status, response_body, in_progress_until,"
            " expires_at FROM idempotency_record WHERE merchant_id = %s AND idempotency_key = %s",
            (merchant_id, key),
        )
        if not found:
            return None
        row = found[0]
        response = None
        if row["response_status"] is not None:
            response = StoredResponse(int(row["response_status"]), json.loads(row["response_body"]))
        return IdempotencyRecord(
            merchant_id=merchant_id,
            idempotency_key=key,
            request_hash=row["request_hash"],
            status=RecordStatus(row["status"]),
            payment_id=row["payment_id"],
            response=response,
            in_progress_until=row["in_progress_until"],
            expires_at=row["expires_at"],
        )

    def complete(
        self,
        merchant_id: str,
        key: str,
        req_hash: str,
        response: StoredResponse,
        now: datetime,
        cursor: Cursor | None = None,
    ) -> None:
        executor = cursor if cursor is not None else self.database
        updated = executor.execute(
            "UPDATE idempotency_record SET status = 'COMPLETED', payment_id = %s, response_status = %s,"
            " response_body = %s, expires_at = %s WHERE merchant_id = %s AND idempotency_key = %s"
            " AND request_hash = %s AND status = 'IN_PROGRESS'",
            (*self._completed_columns(response, now), merchant_id, key, req_hash),
        )
        if not updated:
            raise RequestInProgress()

    def release(self, merchant_id: str, key: str, req_hash: str) -> None:
        self.database.execute(
            "DELETE FROM idempotency_record WHERE merchant_id = %s AND idempotency_key = %s"
            " AND request_hash = %s AND status = 'IN_PROGRESS'",
            (merchant_id, key, req_hash),
        )


_REDIS_CLAIM = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
if redis.call('EXISTS', key) == 1 then
  local fields = redis.call('HMGET', key, 'status', 'in_progress_until')
  if not (fields[1] == 'IN_PROGRESS' and tonumber(fields[2]) <= now) then
    return redis.call('HGETALL', key)
  end
  redis.call('DEL', key)
end
redis.call('HSET', key, 'request_hash', ARGV[2], 'status', 'IN_PROGRESS', 'payment_id', ARGV[3],
           'in_progress_until', ARGV[4], 'expires_at', ARGV[5])
redis.call('PEXPIREAT', key, ARGV[5])
return {}
"""

_REDIS_COMPLETE = """
local key = KEYS[1]
local fields = redis.call('HMGET', key, 'status', 'request_hash')
if fields[1] ~= 'IN_PROGRESS' or fields[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', key, 'status', 'COMPLETED', 'payment_id', ARGV[2], 'response_status', ARGV[3],
           'response_body', ARGV[4], 'expires_at', ARGV[5])
redis.call('PEXPIREAT', key, ARGV[5])
return 1
"""

_REDIS_RELEASE = """
local key = KEYS[1]
local fields = redis.call('HMGET', key, 'status', 'request_hash')
if fields[1] == 'IN_PROGRESS' and fields[2] == ARGV[1] then
  return redis.call('DEL', key)
end
return 0
"""


def _millis(moment: datetime) -> int:
    return int(moment.replace(tzinfo=UTC).timestamp() * 1000)


def _from_millis(value: bytes | str) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC).replace(tzinfo=None)


class RedisIdempotencyStore(IdempotencyStore):
    """Records as Redis hashes with a native TTL; each operation is one atomic Lua script.

    For deployments that keep idempotency out of the database (ElastiCache). It
    cannot join the payment's transaction, so the service completes it after the
    commit; if that write is lost, the payment's unique key still answers the retry.
    Redis errors surface as DependencyUnavailable (503): without its record a
    request cannot be told apart from its retry.
    """

    def __init__(self, client: redis.Redis, config: IdempotencyConfig | None = None) -> None:
        super().__init__(config)
        self.client = client
        self._claim = register_script(client, _REDIS_CLAIM)
        self._complete = register_script(client, _REDIS_COMPLETE)
        self._release = register_script(client, _REDIS_RELEASE)

    @staticmethod
    def redis_key(merchant_id: str, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return f"{REDIS_KEY_PREFIX}{merchant_id}:{digest}"

    def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise DependencyUnavailable("Idempotency store is unavailable") from exc

    def claim(
        self, merchant_id: str, key: str, req_hash: str, payment_id: str, now: datetime
    ) -> IdempotencyRecord | None:
        in_progress_until = now + timedelta(seconds=self.config.idempotency_in_progress_seconds)
        expires_at = now + timedelta(seconds=self.config.idempotency_ttl_seconds)
        reply = self._run(
            self._claim,
            [self.redis_key(merchant_id, key)],
            [_millis(now), req_hash, payment_id, _millis(in_progress_until), _millis(expires_at)],
        )
        if not reply:
            return None
        pairs = zip(reply[::2], reply[1::2], strict=True)
        fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in pairs}

        def text(name: str) -> str | None:
            value = fields.get(name)
            return value.decode() if isinstance(value, bytes) else value

        response = None
        if fields.get("response_status") is not None:
            response = StoredResponse(int(fields["response_status"]), json.loads(fields["response_body"]))
        return IdempotencyRecord(
            merchant_id=merchant_id,
            idempotency_key=key,
            request_hash=text("request_hash") or "",
            status=RecordStatus(text("status")),
            payment_id=text("payment_id"),
            response=response,
            in_progress_until=_from_millis(fields["in_progress_until"]),
            expires_at=_from_millis(fields["expires_at"]),
        )

    def complete(
        self,
        merchant_id: str,
        key: str,
        req_hash: str,
        response: StoredResponse,
        now: datetime,
        cursor: Cursor | None = None,
    ) -> None:
        expires_at = now + timedelta(seconds=self.config.idempotency_ttl_seconds)
        body = json.dumps(response.body, separators=(",", ":"))
        done = self._run(
            self._complete,
            [self.redis_key(merchant_id, key)],
            [req_hash, response.body.get("paymentId") or "", response.status_code, body,
             _millis(expires_at)],
        )
        if not done:
            raise RequestInProgress()

    def release(self, merchant_id: str, key: str, req_hash: str) -> None:
        self._run(self._release, [self.redis_key(merchant_id, key)], [req_hash])
