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

# Cache and rate limit (Redis, or in-process without REDIS_HOST).
CACHE_REQUESTS = Counter(
    "vip_tier_cache_requests",
    "Cached-read lookups by view (tier, list) and result: hit, miss, or bypass (no cache in use).",
    ["view", "result"],
)
CACHE_FILLS_REJECTED = Counter(
    "vip_tier_cache_fills_rejected",
    "Cache fills dropped because a write invalidated the entry while the value was being read.",
)
CACHE_ERRORS = Counter(
    "vip_tier_cache_errors",
    "Failed or timed-out Redis operations, by operation (lookup, fill, invalidate, rate_limit, ping).",
    ["operation"],
)
CACHE_PENDING_INVALIDATIONS = Gauge(
    "vip_tier_cache_pending_invalidations",
    "Cache keys whose invalidation failed and waits for Redis; the cache is bypassed meanwhile.",
)
CACHE_INVALIDATION_RETRIES = Counter(
    "vip_tier_cache_invalidation_retries",
    "Attempts to deliver pending invalidations to Redis, by outcome (ok, failed).",
    ["outcome"],
)
REDIS_UP = Gauge("campaign_redis_up", "1 when the last Redis operation or readiness probe succeeded.")
RATE_LIMITED = Counter(
    "vip_tier_rate_limited_requests",
    "Requests refused with RESOURCE_EXHAUSTED, by method and limiter (redis, local).",
    ["method", "limiter"],
)
