"""Handler of `customer.created`: give the new customer the merchant's default tier, exactly once.

One transaction holds the dedupe row in processed_events, the assignment and the
`vip_tier.assigned` outbox row, so a redelivered event changes nothing. The optional fast path
(Redis `processed:{merchant_id}:{event_id}`) only skips work the database would refuse anyway.

What can never succeed is Rejected (dead-lettered by the transport):
  invalid_payload   required ids missing or not UUIDs
  unknown_merchant  the merchant is not provisioned (replay from the DLQ once it is)
A merchant without a default tier is a no-op, not an error: SPEC says "assign the default tier
if the merchant has one". The event is still recorded as processed.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog

from campaign_service import context, metrics, topics
from campaign_service.domain import events
from campaign_service.events.ports import InboundEvent, ProcessedEvents, Rejected
from campaign_service.service.ports import CustomerAssignment, UnitOfWork

log = structlog.get_logger(__name__)

SOURCE = "customer.created"


@dataclass(frozen=True)
class CustomerCreated:
    event_id: UUID
    merchant_id: UUID
    customer_id: UUID
    correlation_id: str


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


def parse(event: InboundEvent) -> CustomerCreated:
    payload = event.payload
    correlation = event.headers.get("correlation_id") or payload.get("correlation_id") or str(uuid.uuid4())
    return CustomerCreated(
        event_id=_uuid(payload, "event_id"),
        merchant_id=_uuid(payload, "merchant_id"),
        customer_id=_uuid(payload, "customer_id"),
        correlation_id=str(correlation)[:128],
    )


class CustomerCreatedHandler:
    def __init__(self, uow: UnitOfWork, processed: ProcessedEvents | None = None) -> None:
        self._uow = uow
        self._processed = processed

    async def __call__(self, event: InboundEvent) -> None:
        created = parse(event)
        context.correlation_id.set(created.correlation_id)
        bound = log.bind(event_type=SOURCE, event_id=str(created.event_id), merchant_id=str(created.merchant_id))
        if self._processed is not None and await self._processed.seen(created.merchant_id, created.event_id):
            metrics.EVENTS_CONSUMED.labels(SOURCE, "duplicate").inc()
            bound.debug("duplicate event skipped (fast path)")
            return
        outcome, tier_id = await self._apply(created)
        if self._processed is not None:
            await self._processed.remember(created.merchant_id, created.event_id)
        metrics.EVENTS_CONSUMED.labels(SOURCE, outcome).inc()
        if outcome == "assigned":
            metrics.ASSIGNMENT_EVENTS.inc()
        bound.info("customer.created handled", outcome=outcome, tier_id=tier_id)

    async def _apply(self, created: CustomerCreated) -> tuple[str, str | None]:
        async with self._uow(created.merchant_id) as tx:
            if not await tx.merchant_exists():
                raise Rejected("unknown_merchant", f"merchant {created.merchant_id} is not provisioned")
            if not await tx.mark_processed(created.event_id, topics.CUSTOMER_CREATED):
                return "duplicate", None
            tier = await tx.default_tier()
            if tier is None:
                return "no_default_tier", None
            # Millisecond precision: what the database stores is what the event says.
            now = datetime.now(UTC)
            assigned_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
            assignment = CustomerAssignment(
                merchant_id=created.merchant_id,
                customer_id=created.customer_id,
                tier_id=tier.tier_id,
                assigned_at=assigned_at,
                source=SOURCE,
                cause_event_id=created.event_id,
            )
            if not await tx.assign(assignment):
                return "already_assigned", None
            await tx.add_outbox(
                events.tier_assigned(
                    event_id=uuid.uuid4(),
                    merchant_id=created.merchant_id,
                    customer_id=created.customer_id,
                    tier_id=tier.tier_id,
                    assigned_at=assigned_at,
                    correlation_id=created.correlation_id,
                    cause_event_id=created.event_id,
                )
            )
            return "assigned", tier.tier_id
