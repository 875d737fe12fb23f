"""Prometheus metrics, in one place. Names follow the plan where it names them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)

LOOKUP_LATENCY = Histogram(
    "vip_tier_lookup_latency_seconds",
    "Latency of tier lookups (GetVIPTier, ListVIPTiers, EvaluateTier, GetCustomerTier).",
    ["method", "cache"],
    buckets=LATENCY_BUCKETS,
)
# prometheus_client exposes counters with a `_total` suffix: vip_tier_lookup_errors_by_type_total.
LOOKUP_ERRORS = Counter(
    "vip_tier_lookup_errors_by_type",
    "Tier lookups that did not return a tier, by gRPC status code name.",
    ["type"],
)
ASSIGNMENT_EVENTS = Counter(
    "vip_tier_assignment_events",
    "Tier assignments made from consumed events.",
)
ASSIGNMENT_FAILURES = Counter(
    "vip_tier_assignment_failures",
    "Events that could not be applied, by event type and reason.",
    ["event_type", "reason"],
)
GRPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, by method and status code.",
    ["grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC on the server, by method.",
    ["grpc_method"],
    buckets=LATENCY_BUCKETS,
)
DB_UP = Gauge("campaign_db_up", "1 when the last PostgreSQL readiness probe succeeded.")

# Events: outbox relay, consumer, retries.
EVENTS_CONSUMED = Counter(
    "campaign_events_consumed",
    "Consumed events handled, by event type and outcome (assigned, duplicate, no_default_tier, already_assigned).",
    ["event_type", "outcome"],
)
OUTBOX_BACKLOG = Gauge("campaign_outbox_backlog", "Outbox events not yet published (as of the relay's last look).")
OUTBOX_OLDEST_AGE = Gauge(
    "campaign_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox event (0 when none)."
)
OUTBOX_PUBLISHED = Counter("campaign_outbox_published", "Outbox events published and acknowledged.", ["topic"])
OUTBOX_PUBLISH_FAILURES = Counter(
    "campaign_outbox_publish_failures", "Outbox events whose publication failed (retried later).", ["topic"]
)
OUTBOX_PURGED = Counter("campaign_outbox_purged", "Published outbox rows deleted after the retention period.")
PRODUCER_REBUILDS = Counter("campaign_kafka_producer_rebuilds", "Kafka producers rebuilt after a fatal error.")
CONSUMER_LAG = Gauge(
    "campaign_kafka_consumer_lag",
    "Messages behind the partition's high watermark after the last commit.",
    ["topic", "partition"],
)
RETRIES = Counter("campaign_retries", "Retries of bounded retry loops, by loop.", ["loop"])
PROCESSED_CACHE_ERRORS = Counter(
    "campaign_processed_cache_errors",
    "Redis failures of the processed-events fast path (the database decides).",
    ["op"],
)
