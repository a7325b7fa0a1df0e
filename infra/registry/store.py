"""The registry's state: one DynamoDB item per instance, read through a short cache.

DynamoDB (not the registry process) holds the leases so that several registry
processes can serve the same fleet and a registry restart loses nothing. Reads
are hot (every gateway refreshes every few seconds, Prometheus and Eureka clients
poll), so a full scan is cached for ``cache_ttl`` seconds; this process's own
writes invalidate the cache so a register is visible at once to its next read.
Expired leases are filtered on every read and deleted by :meth:`RegistryStore.evict_expired`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

log = logging.getLogger("payfn.registry")

STATUSES = ("UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN")


class UnknownInstanceError(LookupError):
    """No live lease for this app/instance (Eureka answers 404)."""


class NotOwnerError(PermissionError):
    """The live lease belongs to another registry account (answered 403, nothing changes)."""


def now_millis() -> int:
    return int(time.time() * 1000)


@dataclass
class Instance:
    """One instance's lease and its Eureka description, timestamps in epoch milliseconds.

    ``reported_status`` is what the instance itself said; ``overridden_status`` is an
    operator's override (``UNKNOWN`` when none). The effective ``status`` is the
    override when there is one, as in Eureka, so an instance put OUT_OF_SERVICE stays
    out even when it re-registers as UP.
    """

    app: str
    instance_id: str
    host_name: str
    ip_addr: str
    port: int
    reported_status: str = "UP"
    overridden_status: str = "UNKNOWN"
    metadata: dict[str, str] = field(default_factory=dict)
    renewal_interval: int = 30
    lease_duration: int = 90
    registration_ts: int = 0
    last_renewal_ts: int = 0
    service_up_ts: int = 0
    last_updated_ts: int = 0
    last_dirty_ts: int = 0
    expires_at: int = 0
    document: dict[str, Any] = field(default_factory=dict)
    #: The registry account that registered the lease; only it may change the lease.
    owner: str = ""

    @property
    def status(self) -> str:
        return self.reported_status if self.overridden_status == "UNKNOWN" else self.overridden_status

    def expired(self, now_ms: int) -> bool:
        return self.expires_at * 1000 <= now_ms

    def to_item(self) -> dict[str, Any]:
        """DynamoDB item (low-level attribute values)."""
        return {
            "app": {"S": self.app},
            "instanceId": {"S": self.instance_id},
            "host": {"S": self.host_name},
            "ipAddr": {"S": self.ip_addr},
            "port": {"N": str(self.port)},
            "status": {"S": self.status},
            "reportedStatus": {"S": self.reported_status},
            "overriddenStatus": {"S": self.overridden_status},
            "metadata": {"M": {k: {"S": v} for k, v in self.metadata.items()}},
            "renewalInterval": {"N": str(self.renewal_interval)},
            "leaseDuration": {"N": str(self.lease_duration)},
            "registrationTimestamp": {"N": str(self.registration_ts)},
            "lastRenewal": {"N": str(self.last_renewal_ts)},
            "serviceUpTimestamp": {"N": str(self.service_up_ts)},
            "lastUpdatedTimestamp": {"N": str(self.last_updated_ts)},
            "lastDirtyTimestamp": {"N": str(self.last_dirty_ts)},
            "expiresAt": {"N": str(self.expires_at)},
            "document": {"S": json.dumps(self.document, separators=(",", ":"))},
            "owner": {"S": self.owner},
        }

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Instance:
        def num(name: str) -> int:
            return int(item[name]["N"]) if name in item else 0

        def text(name: str, default: str = "") -> str:
            return str(item[name]["S"]) if name in item else default

        return cls(
            app=text("app"),
            instance_id=text("instanceId"),
            host_name=text("host"),
            ip_addr=text("ipAddr", text("host")),
            port=num("port"),
            reported_status=text("reportedStatus", text("status", "UP")),
            overridden_status=text("overriddenStatus", "UNKNOWN"),
            metadata={k: str(v.get("S", "")) for k, v in item.get("metadata", {}).get("M", {}).items()},
            renewal_interval=num("renewalInterval"),
            lease_duration=num("leaseDuration"),
            registration_ts=num("registrationTimestamp"),
            last_renewal_ts=num("lastRenewal"),
            service_up_ts=num("serviceUpTimestamp"),
            last_updated_ts=num("lastUpdatedTimestamp"),
            last_dirty_ts=num("lastDirtyTimestamp"),
            expires_at=num("expiresAt"),
            document=json.loads(text("document", "{}")),
            owner=text("owner"),
        )


class RegistryStore:
    """Leases in a DynamoDB table, with Eureka's operations on them."""

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        cache_ttl: float = 1.0,
        clock: Callable[[], int] = now_millis,
    ) -> None:
        self._db = dynamodb
        self.table = table
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self._generation = 0
        self._cache: list[Instance] | None = None
        self._cached_at = 0.0

    def _invalidate(self) -> None:
        with self._lock:
            self._cache = None
            self._generation += 1

    def _fresh_cache(self) -> list[Instance] | None:
        with self._lock:
            if self._cache is not None and time.monotonic() - self._cached_at < self.cache_ttl:
                return self._cache
            return None

    def _scan(self) -> list[Instance]:
        items: list[Instance] = []
        kwargs: dict[str, Any] = {"TableName": self.table}
        while True:
            page = self._db.scan(**kwargs)
            for item in page.get("Items", []):
                try:
                    items.append(Instance.from_item(item))
                except (KeyError, TypeError, ValueError) as exc:  # written by something else: skip it
                    log.warning("registry item %s skipped: %r", item.get("instanceId"), exc)
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def all_instances(self, include_expired: bool = False) -> list[Instance]:
        """Every instance, live ones only unless asked; sorted by app then id."""
        cached = self._fresh_cache()
        if cached is None:
            with self._scan_lock:  # one scan at a time: concurrent readers wait for it, not scan too
                cached = self._fresh_cache()
                if cached is None:
                    generation = self._generation
                    cached = sorted(self._scan(), key=lambda i: (i.app, i.instance_id))
                    with self._lock:
                        if generation == self._generation:  # no write of ours raced the scan
                            self._cache, self._cached_at = cached, time.monotonic()
        if include_expired:
            return list(cached)
        now = self._clock()
        return [instance for instance in cached if not instance.expired(now)]

    def apps(self) -> dict[str, list[Instance]]:
        result: dict[str, list[Instance]] = {}
        for instance in self.all_instances():
            result.setdefault(instance.app, []).append(instance)
        return result

    def get(self, app: str, instance_id: str) -> Instance:
        for instance in self.all_instances():
            if instance.app == app and instance.instance_id == instance_id:
                return instance
        raise UnknownInstanceError(f"{app}/{instance_id}")

    def find(self, instance_id: str) -> Instance:
        for instance in self.all_instances():
            if instance.instance_id == instance_id:
                return instance
        raise UnknownInstanceError(instance_id)

    def _existing(self, app: str, instance_id: str) -> Instance | None:
        item = self._db.get_item(
            TableName=self.table, Key=self._key(app, instance_id), ConsistentRead=True
        ).get("Item")
        return None if item is None else Instance.from_item(item)

    @staticmethod
    def _key(app: str, instance_id: str) -> dict[str, Any]:
        return {"app": {"S": app}, "instanceId": {"S": instance_id}}

    def register(self, instance: Instance) -> Instance:
        """Start (or restart) a lease for ``instance.owner``. A status override survives re-registration.

        A live lease of another account is never replaced (:class:`NotOwnerError`); the put
        is conditional, so two accounts racing for one id cannot both win.
        """
        now = self._clock()
        previous = self._existing(instance.app, instance.instance_id)
        live = previous is not None and not previous.expired(now)
        if live and previous is not None and previous.owner not in ("", instance.owner):
            raise NotOwnerError(f"{instance.app}/{instance.instance_id}")
        if live and previous is not None and instance.overridden_status == "UNKNOWN":
            instance.overridden_status = previous.overridden_status
        instance.registration_ts = now
        instance.last_renewal_ts = now
        instance.last_updated_ts = now
        instance.last_dirty_ts = instance.last_dirty_ts or now
        instance.service_up_ts = (
            previous.service_up_ts if previous is not None and previous.service_up_ts else 0
        ) or (now if instance.status == "UP" else 0)
        instance.expires_at = (now // 1000) + instance.lease_duration
        try:
            self._db.put_item(
                TableName=self.table, Item=instance.to_item(),
                ConditionExpression="attribute_not_exists(instanceId) OR expiresAt <= :nowSecs"
                                    " OR attribute_not_exists(#owner) OR #owner IN (:none, :owner)",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":nowSecs": {"N": str(now // 1000)}, ":none": {"S": ""},
                                           ":owner": {"S": instance.owner}})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise NotOwnerError(f"{instance.app}/{instance.instance_id}") from None
            raise
        finally:
            self._invalidate()
        return instance

    def _update(self, app: str, instance_id: str, owner: str, expression: str, values: dict[str, Any],
                names: dict[str, str] | None = None) -> None:
        """Update a live lease of ``owner`` only (else UnknownInstanceError / NotOwnerError)."""
        now = self._clock()
        values = {**values, ":nowSecs": {"N": str(now // 1000)}, ":none": {"S": ""}, ":owner": {"S": owner}}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": self._key(app, instance_id),
            "UpdateExpression": expression,
            "ConditionExpression": "attribute_exists(instanceId) AND expiresAt > :nowSecs"
                                   " AND (attribute_not_exists(#owner) OR #owner IN (:none, :owner))",
            "ExpressionAttributeValues": values,
            "ExpressionAttributeNames": {**(names or {}), "#owner": "owner"},
        }
        try:
            self._db.update_item(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                self._raise_refusal(app, instance_id)
            raise
        self._invalidate()

    def _raise_refusal(self, app: str, instance_id: str) -> None:
        """After a refused conditional write: the lease is someone else's, or it is not there."""
        current = self._existing(app, instance_id)
        if current is not None and not current.expired(self._clock()):
            raise NotOwnerError(f"{app}/{instance_id}") from None
        raise UnknownInstanceError(f"{app}/{instance_id}") from None

    def renew(self, app: str, instance_id: str, owner: str) -> None:
        """Heartbeat: extend the lease by the instance's own lease duration."""
        now = self._clock()
        instance = self._existing(app, instance_id)
        if instance is None or instance.expired(now):
            raise UnknownInstanceError(f"{app}/{instance_id}")
        self._update(
            app, instance_id, owner,
            "SET lastRenewal = :now, expiresAt = :expires",
            {":now": {"N": str(now)}, ":expires": {"N": str(now // 1000 + instance.lease_duration)}},
        )

    def set_override(self, app: str, instance_id: str, status: str, owner: str) -> None:
        """``PUT .../status?value=``: the operator's status wins over the instance's own."""
        now = self._clock()
        self._update(
            app, instance_id, owner,
            "SET overriddenStatus = :s, #st = :s, lastUpdatedTimestamp = :now, lastDirtyTimestamp = :now",
            {":s": {"S": status}, ":now": {"N": str(now)}},
            {"#st": "status"},
        )

    def delete_override(self, app: str, instance_id: str, status: str | None, owner: str) -> None:
        """``DELETE .../status``: back to the instance's own status (or ``value`` if given)."""
        instance = self.get_consistent(app, instance_id)
        reported = status or instance.reported_status
        now = self._clock()
        self._update(
            app, instance_id, owner,
            "SET overriddenStatus = :unknown, reportedStatus = :r, #st = :r, "
            "lastUpdatedTimestamp = :now, lastDirtyTimestamp = :now",
            {":unknown": {"S": "UNKNOWN"}, ":r": {"S": reported}, ":now": {"N": str(now)}},
            {"#st": "status"},
        )

    def update_metadata(self, app: str, instance_id: str, values: Mapping[str, str], owner: str) -> None:
        """``PUT .../metadata?k=v``: merge keys into the instance's metadata."""
        if not values:
            return
        names = {f"#k{i}": key for i, key in enumerate(values)}
        attribute_values: dict[str, Any] = {
            f":v{i}": {"S": value} for i, value in enumerate(values.values())
        }
        attribute_values[":now"] = {"N": str(self._clock())}
        sets = ", ".join(f"metadata.#k{i} = :v{i}" for i in range(len(values)))
        self._update(app, instance_id, owner, f"SET {sets}, lastUpdatedTimestamp = :now", attribute_values,
                     names)

    def get_consistent(self, app: str, instance_id: str) -> Instance:
        instance = self._existing(app, instance_id)
        if instance is None or instance.expired(self._clock()):
            raise UnknownInstanceError(f"{app}/{instance_id}")
        return instance

    def cancel(self, app: str, instance_id: str, owner: str) -> None:
        """Deregister; unknown instance → UnknownInstanceError (Eureka's 404), another's → NotOwnerError.

        An expired lease of another account may be cancelled (it is gone already).
        """
        try:
            self._db.delete_item(
                TableName=self.table,
                Key=self._key(app, instance_id),
                ConditionExpression="attribute_exists(instanceId) AND (expiresAt <= :nowSecs"
                                    " OR attribute_not_exists(#owner) OR #owner IN (:none, :owner))",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":nowSecs": {"N": str(self._clock() // 1000)}, ":none": {"S": ""},
                                           ":owner": {"S": owner}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                self._raise_refusal(app, instance_id)
            raise
        finally:
            self._invalidate()

    def evict_expired(self) -> list[Instance]:
        """Delete leases past their expiry (a renewal racing the sweep wins); returns the evicted."""
        now = self._clock()
        evicted = []
        for instance in self.all_instances(include_expired=True):
            if not instance.expired(now):
                continue
            try:
                self._db.delete_item(
                    TableName=self.table,
                    Key=self._key(instance.app, instance.instance_id),
                    ConditionExpression="expiresAt <= :nowSecs",
                    ExpressionAttributeValues={":nowSecs": {"N": str(now // 1000)}},
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                continue
            evicted.append(instance)
        if evicted:
            self._invalidate()
        return evicted
