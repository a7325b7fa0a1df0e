"""Kafka topic names: the one list the producers, consumers and the stack share."""

from __future__ import annotations

PAYMENT_AUTHORIZED = "payment.authorized"
PAYMENT_CAPTURED = "payment.captured"
PAYMENT_REFUNDED = "payment.refunded"
PAYMENT_DLQ = "payment.dlq"

#: Every topic the stack creates (partitions: ``PAYFN_KAFKA_TOPIC_PARTITIONS``).
ALL_TOPICS: tuple[str, ...] = (PAYMENT_AUTHORIZED, PAYMENT_CAPTURED, PAYMENT_REFUNDED, PAYMENT_DLQ)
