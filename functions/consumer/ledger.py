"""LedgerConsumerFunction: verifies each captured/refunded event's ledger entry (writes it if missing).

Ingest writes the entry in the same transaction as the status change, so this
consumer normally only verifies it; see ``payfn_shared.payments.consumers`` for why, and for
the idempotency (``processed_event``) that makes redelivery harmless.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from payfn_shared.payments.consumers import ledger_effect, process_kafka_batch
from payfn_shared.platform.db import get_database

logger = Logger(service="ledger-consumer")


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_kafka_batch(event, get_database(), ledger_effect)
