"""OutboxRelayFunction: the scheduled outbox relay (EventBridge ``Scheduled Event``).

Thin on purpose: the relay logic and its SQL live in ``payfn_shared.payments.relay``. The
result carries the backlog gauges so the local scheduler (or a metric filter on
AWS) can expose ``payfn_outbox_backlog`` and ``payfn_outbox_oldest_age_seconds``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from payfn_shared.payments.publisher import warm_publisher
from payfn_shared.payments.relay import OutboxRelay, get_relay_publisher
from payfn_shared.platform.db import get_database

logger = Logger(service="outbox-relay")
warm_publisher(get_relay_publisher)


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    relay = OutboxRelay(get_database(), get_relay_publisher())
    report = relay.run(context.get_remaining_time_in_millis).to_dict()
    logger.info("outbox relay run", extra={"rule": event.get("resources"), **report})
    return report
