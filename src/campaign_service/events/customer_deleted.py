"""Handler of `customer.deleted`: erase the customer's tier state, history, manual assignments and
qualifying points in ONE transaction of that merchant, and leave a `vip_tier.customer_erased`
audit event (ids only) in the same transaction's outbox.

Exactly-once effect as for customer.created: the dedupe row is written in the erasing
transaction, the offset is committed after it. A redelivered event is a duplicate and changes
nothing; a second, different customer.deleted of the same customer erases nothing more but is
audited again (the audit says each request was honoured).

Rejected (dead-lettered by the transport):
  invalid_payload   ids missing or not UUIDs
  unknown_merchant  the merchant is not provisioned (replay from the DLQ once it is)
Erasure is rare: events are handled one at a time, in key order (events/key_order.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog

from campaign_service import metrics, topics
from campaign_service.domain import events
from campaign_service.domain.ids import is_correlation_id
from campaign_service.events.key_order import one_by_one
from campaign_service.events.ports import InboundEvent, Outcome, Rejected
from campaign_service.service.progression_api_ports import ProgressionApiStore

log = structlog.get_logger(__name__)

SOURCE = topics.CUSTOMER_DELETED


def _uuid(payload: Mapping[str, Any], name: str) -> UUID:
    value = payload.get(name)
    if value is None:
        raise Rejected("invalid_payload", f"{name} is missing")
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise Rejected("invalid_payload", f"{name} is not a UUID") from None


class CustomerDeletedHandler:
    def __init__(self, store: ProgressionApiStore) -> None:
        self._store = store
        self._batch = one_by_one(self, concurrency=1)

    async def batch(self, batch: Sequence[InboundEvent]) -> list[Outcome]:
        """The BatchHandler."""
        return await self._batch(batch)

    async def __call__(self, event: InboundEvent) -> None:
        p = event.payload
        event_id, merchant, customer = _uuid(p, "event_id"), _uuid(p, "merchant_id"), _uuid(p, "customer_id")
        correlation = event.headers.get("correlation_id")
        async with self._store(merchant) as tx:
            if not await tx.merchant_exists():
                raise Rejected("unknown_merchant", f"merchant {merchant} is not provisioned")
            if not await tx.mark_processed(event_id, SOURCE):
                metrics.EVENTS_CONSUMED.labels(SOURCE, "duplicate").inc()
                return
            erased = await tx.erase(customer)
            await tx.add_outbox(
                [
                    events.customer_erased(
                        event_id=uuid.uuid4(),
                        merchant_id=merchant,
                        customer_id=customer,
                        cause_event_id=event_id,
                        erased_at=datetime.now(UTC),
                        correlation_id=correlation if is_correlation_id(correlation) else str(uuid.uuid4()),
                        traceparent=event.traceparent,
                    )
                ]
            )
        metrics.EVENTS_CONSUMED.labels(SOURCE, "erased").inc()
        log.info(
            "customer erased",
            event_type=SOURCE,
            states=erased.states,
            history=erased.history,
            point_days=erased.point_days,
        )
