"""Kafka topic names, in one place (the two this service produces are named by its domain events)."""

from campaign_service.domain.events import (
    VIP_TIER_ASSIGNED,
    VIP_TIER_CUSTOMER_ERASED,
    VIP_TIER_DOWNGRADE_SCHEDULED,
    VIP_TIER_UPDATED,
)

__all__ = [
    "CUSTOMER_CREATED",
    "CUSTOMER_CREATED_DLQ",
    "VIP_TIER_ASSIGNED",
    "VIP_TIER_CUSTOMER_ERASED",
    "VIP_TIER_DOWNGRADE_SCHEDULED",
    "VIP_TIER_UPDATED",
]

CUSTOMER_CREATED = "customer.created"
CUSTOMER_CREATED_DLQ = "customer.created.dlq"
POINTS_RECORDED = "points.recorded"
POINTS_RECORDED_DLQ = "points.recorded.dlq"
CUSTOMER_DELETED = "customer.deleted"
CUSTOMER_DELETED_DLQ = "customer.deleted.dlq"
