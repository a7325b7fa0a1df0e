"""The payment events contract: topics, payload, headers and record key.

Topic names live in ``payfn_shared.payments.topics`` (shared with the stack); this module
owns the shape so the producer (ingest), the outbox relay and the
consumers cannot drift apart. The key is the paymentId so every event of one
payment lands in one partition, in order.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from payfn_shared.payments.topics import PAYMENT_AUTHORIZED, PAYMENT_CAPTURED, PAYMENT_REFUNDED

EVENT_AUTHORIZED = "PAYMENT_AUTHORIZED"
EVENT_CAPTURED = "PAYMENT_CAPTURED"
EVENT_REFUNDED = "PAYMENT_REFUNDED"

#: eventType → topic; the only place the mapping exists.
TOPIC_BY_EVENT_TYPE = {
    EVENT_AUTHORIZED: PAYMENT_AUTHORIZED,
    EVENT_CAPTURED: PAYMENT_CAPTURED,
    EVENT_REFUNDED: PAYMENT_REFUNDED,
}


def iso_millis(moment: datetime) -> str:
    """UTC timestamp with milliseconds and a ``Z`` (the API's and the events' format)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class PaymentEvent:
    """One event as it is stored in the outbox and written to Kafka."""

    event_id: str
    event_type: str
    payload: dict[str, Any]

    @property
    def topic(self) -> str:
        return TOPIC_BY_EVENT_TYPE[self.event_type]

    @property
    def key(self) -> str:
        return str(self.payload["paymentId"])

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka record headers (name, bytes), as the spec names them."""
        return [("eventId", self.event_id.encode()), ("eventType", self.event_type.encode())]

    def value(self) -> bytes:
        return encode_payload(self.payload)


def encode_payload(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")


def build_event(
    event_type: str,
    *,
    payment_id: str,
    merchant_id: str,
    status: str,
    amount: int,
    currency: str,
    occurred_at: datetime,
    reason: str | None = None,
    event_id: str | None = None,
) -> PaymentEvent:
    """Build the spec's payload; ``reason`` only appears on events that have one."""
    if event_type not in TOPIC_BY_EVENT_TYPE:
        raise ValueError(f"unknown event type {event_type!r}")
    eid = event_id or str(uuid.uuid4())
    payload: dict[str, Any] = {
        "eventId": eid,
        "eventType": event_type,
        "paymentId": payment_id,
        "merchantId": merchant_id,
        "status": status,
        "amount": amount,
        "currency": currency,
        "occurredAt": iso_millis(occurred_at),
    }
    if reason is not None:
        payload["reason"] = reason
    return PaymentEvent(eid, event_type, payload)
