"""BalanceProjectionFunction: the per-merchant balance projection (``merchant_balance``).

Each authorized/captured/refunded event adds its amount to the merchant's total in
the same transaction as its ``processed_event`` row: exactly one effect per event
however often Kafka delivers it (see ``payfn_shared.payments.consumers``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from payfn_shared.payments.consumers import balance_effect, process_kafka_batch
from payfn_shared.platform.db import get_database

logger = Logger(service="balance-projection")


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_kafka_batch(event, get_database(), balance_effect)
