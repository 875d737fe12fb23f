"""Kafka topic names, in one place."""

VIP_TIER_ASSIGNED = "vip_tier.assigned"
VIP_TIER_UPDATED = "vip_tier.updated"
CUSTOMER_CREATED = "customer.created"
CUSTOMER_CREATED_DLQ = "customer.created.dlq"
POINTS_RECORDED = "points.recorded"
POINTS_RECORDED_DLQ = "points.recorded.dlq"
