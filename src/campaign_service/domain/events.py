"""Events this service announces; payload shapes match the Avro schemas in avro/."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

# The names of the events this service announces, also their topic names (SPEC "Events");
# defined here so the domain needs nothing outside it, listed with the others in topics.py.
VIP_TIER_ASSIGNED = "vip_tier.assigned"
VIP_TIER_UPDATED = "vip_tier.updated"
VIP_TIER_CUSTOMER_ERASED = "vip_tier.customer_erased"
VIP_TIER_DOWNGRADE_SCHEDULED = "vip_tier.downgrade_scheduled"


@dataclass(frozen=True)
class OutboxMessage:
    """A message to publish, written to the outbox in the transaction of the change it announces."""

    event_id: UUID
    merchant_id: UUID
    topic: str
    key: str
    payload: dict[str, Any]
    headers: dict[str, str]
    # W3C traceparent of the span this message was written in (None: tracing off); the relay's
    # publish span is its child.
    traceparent: str | None = None


def _ts_millis(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def tier_updated(
    *,
    event_id: UUID,
    merchant_id: UUID,
    tier_id: str,
    updated_fields: list[str],
    updated_at: datetime,
    actor: str,
    correlation_id: str,
    traceparent: str | None = None,
) -> OutboxMessage:
    return OutboxMessage(
        event_id=event_id,
        merchant_id=merchant_id,
        topic=VIP_TIER_UPDATED,
        key=f"{merchant_id}:{tier_id}",
        payload={
            "event_id": str(event_id),
            "merchant_id": str(merchant_id),
            "tier_id": tier_id,
            "updated_fields": updated_fields,
            "updated_at": _ts_millis(updated_at),
            "actor": actor,
            "correlation_id": correlation_id,
        },
        headers={"correlation_id": correlation_id},
        traceparent=traceparent,
    )


def tier_assigned(
    *,
    event_id: UUID,
    merchant_id: UUID,
    customer_id: UUID,
    tier_id: str,
    assigned_at: datetime,
    correlation_id: str,
    cause_event_id: UUID | None,
    traceparent: str | None = None,
    previous_tier_id: str | None = None,
    direction: str = "initial",
    reason: str = "default",
    bonus_points: int = 0,
    program_version: int = 0,
    job_id: UUID | None = None,
) -> OutboxMessage:
    cause = str(cause_event_id) if cause_event_id else None
    headers = {"correlation_id": correlation_id}
    if cause:
        headers["cause_event_id"] = cause
    return OutboxMessage(
        event_id=event_id,
        merchant_id=merchant_id,
        topic=VIP_TIER_ASSIGNED,
        key=f"{merchant_id}:{customer_id}",
        payload={
            "event_id": str(event_id),
            "customer_id": str(customer_id),
            "merchant_id": str(merchant_id),
            "tier_id": tier_id,
            "assigned_at": _ts_millis(assigned_at),
            "correlation_id": correlation_id,
            "cause_event_id": cause,
            "previous_tier_id": previous_tier_id,
            "direction": direction,
            "reason": reason,
            "bonus_points": bonus_points,
            "program_version": program_version,
            "job_id": str(job_id) if job_id else None,
        },
        headers=headers,
        traceparent=traceparent,
    )


def customer_erased(
    *,
    event_id: UUID,
    merchant_id: UUID,
    customer_id: UUID,
    cause_event_id: UUID,
    erased_at: datetime,
    correlation_id: str,
    traceparent: str | None = None,
) -> OutboxMessage:
    """Audit of an erasure (customer.deleted): ids only."""
    return OutboxMessage(
        event_id=event_id,
        merchant_id=merchant_id,
        topic=VIP_TIER_CUSTOMER_ERASED,
        key=f"{merchant_id}:{customer_id}",
        payload={
            "event_id": str(event_id),
            "merchant_id": str(merchant_id),
            "customer_id": str(customer_id),
            "cause_event_id": str(cause_event_id),
            "erased_at": _ts_millis(erased_at),
        },
        headers={"correlation_id": correlation_id, "cause_event_id": str(cause_event_id)},
        traceparent=traceparent,
    )


def downgrade_scheduled(
    *,
    event_id: UUID,
    merchant_id: UUID,
    customer_id: UUID,
    tier_id: str,
    target_tier_id: str,
    deadline: datetime,
    points_needed: int,
    program_version: int,
    correlation_id: str,
) -> OutboxMessage:
    """A warning that the customer will move down at `deadline` without `points_needed` more."""
    return OutboxMessage(
        event_id=event_id,
        merchant_id=merchant_id,
        topic=VIP_TIER_DOWNGRADE_SCHEDULED,
        key=f"{merchant_id}:{customer_id}",
        payload={
            "event_id": str(event_id),
            "merchant_id": str(merchant_id),
            "customer_id": str(customer_id),
            "tier_id": tier_id,
            "target_tier_id": target_tier_id,
            "deadline": _ts_millis(deadline),
            "points_needed": points_needed,
            "program_version": program_version,
            "correlation_id": correlation_id,
        },
        headers={"correlation_id": correlation_id},
    )
