"""Prometheus metrics, in one place. Names follow the plan where it names them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

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
    "Consumed events that could not be applied: reason=dead_letter (sent to the DLQ) or transient (retried).",
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

# Authentication and TLS.
AUTH_DECISIONS = Counter(
    "campaign_auth_decisions",
    "Authentication/authorization outcomes of CampaignService RPCs.",
    ["result"],  # ok | unauthenticated | permission_denied | unavailable | invalid_argument
)
AUTH_CACHE = Counter(
    "campaign_auth_cache_lookups",
    "Lookups of verified tokens in the in-process cache.",
    ["result"],  # hit | miss
)
AUTH_SERVICE_CALLS = Histogram(
    "campaign_auth_service_call_seconds",
    "Calls to auth.v1.AuthService/ValidateToken, by outcome.",
    ["result"],  # valid | invalid | unavailable
    buckets=LATENCY_BUCKETS,
)
JWKS_FETCHES = Counter(
    "campaign_jwks_fetches",
    "Fetches of the JWKS URL (bounded: at most one per refresh interval, or per 30 s on an unknown key id).",
    ["result"],  # ok | error
)
KEY_RELOADS = Counter(
    "campaign_key_file_reloads",
    "Re-reads of changed key/certificate files (JWKS, public key, TLS), by kind and outcome.",
    ["kind", "result"],
)
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
PROCESSED_PURGED = Counter(
    "campaign_processed_events_purged", "processed_events rows (dedupe record) deleted after the retention period."
)
PRODUCER_REBUILDS = Counter("campaign_kafka_producer_rebuilds", "Kafka producers rebuilt after a fatal error.")
CONSUMER_LAG = Gauge(
    "campaign_kafka_consumer_lag",
    "Messages behind the partition's high watermark after the last commit.",
    ["topic", "partition"],
)
DEAD_LETTERED = Counter(
    "campaign_events_dead_lettered",
    "Consumed events sent to the dead-letter topic, by event type and reason"
    " (undecodable, invalid_payload, unknown_merchant); also counted as failures with reason=dead_letter.",
    ["event_type", "reason"],
)
RETRIES = Counter("campaign_retries", "Retries of bounded retry loops, by loop.", ["loop"])
# Where an event's time goes between the buses (issue 13's latency target): each step of a
# consumer's cycle (fetch: waiting for the first message and taking what is ready; handle: decode
# and the handler's transaction; commit: the offset commit) and of a relay claim (claim: lock and
# read rows; publish: encode, produce and wait for the broker's acks; mark: mark and commit).
CONSUMER_STEP_SECONDS = Histogram(
    "campaign_consumer_step_seconds",
    "Duration of each step of a consumer's fetch-handle-commit cycle, by topic.",
    ["topic", "step"],
    buckets=LATENCY_BUCKETS,
)
RELAY_STEP_SECONDS = Histogram(
    "campaign_relay_step_seconds",
    "Duration of each step of an outbox relay claim (claim, publish, mark).",
    ["step"],
    buckets=LATENCY_BUCKETS,
)
PROCESSED_CACHE_ERRORS = Counter(
    "campaign_processed_cache_errors",
    "Redis failures of the processed-events fast path (the database decides).",
    ["op"],
)


class TierCounts(Collector):
    """`vip_tiers_total{merchant_id}`: tiers of the top-N merchants plus one `other` series.

    Cardinality stays bounded at 100k merchants: at most N + 1 series per instance (N is
    CAMPAIGN_TIER_COUNTS_TOP_N, default 50), whatever the number of merchants; the rest are summed
    into merchant_id="other", so `sum(max by (merchant_id) (vip_tiers_total))` is still the exact
    total. Values come from one aggregate query per refresh interval (adapters/postgres/tier_counts),
    not from per-request labels: ~0.35 s at 100k merchants / 350k tiers (bench/tier_counts.py),
    once a minute per instance by default. Exposed as `untyped` because the plan's name ends in `_total`,
    which Prometheus reserves for counters on gauges (`promtool check metrics` refuses that).
    Every replica exports the same values: dashboards take `max by (merchant_id)`.
    """

    OTHER = "other"

    def __init__(self) -> None:
        self._snapshot: tuple[tuple[str, int], ...] = ()

    def update(self, top: Mapping[str, int], other: int) -> None:
        # One tuple swap: a scrape sees the old snapshot or the new one, never half of each.
        self._snapshot = (*top.items(), (self.OTHER, other))

    def collect(self) -> Iterator[Metric]:
        family = UnknownMetricFamily(
            "vip_tiers_total",
            "Tiers per merchant: the top CAMPAIGN_TIER_COUNTS_TOP_N merchants, the rest summed as 'other'.",
            labels=["merchant_id"],
        )
        for merchant, count in self._snapshot:
            family.add_metric([merchant], count)
        yield family


TIERS_BY_MERCHANT = TierCounts()
REGISTRY.register(TIERS_BY_MERCHANT)
TIER_COUNT_REFRESH_FAILURES = Counter(
    "campaign_tier_counts_refresh_failures",
    "Refreshes of vip_tiers_total that failed (database unreachable or slow); the last values stay.",
)

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
    "Cache keys whose fill block a write could not lift after its commit; retried, else it expires.",
)
CACHE_EPOCH_ADVANCES = Counter(
    "vip_tier_cache_epoch_advances",
    "Advances of the durable cache epoch, by reason: write (Redis unreachable for a write) or"
    " redis_replaced (a restarted or failed-over Redis, or a lost epoch record).",
    ["reason"],
)
CACHE_TRUSTED = Gauge(
    "vip_tier_cache_trusted",
    "1 while this instance trusts the Redis cache (confirmed against PostgreSQL, lease running).",
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

# Tier progression (issue 13).
TIER_MOVES = Counter(
    "campaign_tier_moves",
    "Customers moved between tiers, by direction (initial, up, down, manual) and reason.",
    ["direction", "reason"],
)
SCHEDULER_CHUNK_SECONDS = Histogram(
    "campaign_scheduler_chunk_seconds",
    "Time to claim and re-assess one chunk of due customers.",
    buckets=LATENCY_BUCKETS,
)
DUE_BACKLOG = Gauge("campaign_tier_due_backlog", "Customers past their tier deadline, not yet re-assessed.")
OLDEST_OVERDUE_SECONDS = Gauge(
    "campaign_tier_oldest_overdue_seconds", "Age of the earliest passed tier deadline not yet re-assessed (0: none)."
)
DOWNGRADE_WARNINGS = Counter(
    "campaign_tier_downgrade_warnings",
    "vip_tier.downgrade_scheduled warnings emitted (once per customer and deadline).",
)
SCHEDULER_REASSESSED = Counter("campaign_scheduler_reassessed", "Due customers re-assessed by the deadline scheduler.")

TIER_CHANGE_JOB_CHUNK_SECONDS = Histogram(
    "campaign_tier_change_job_chunk_seconds",
    "Duration of one re-assessment job chunk (claim, evaluate, write, cursor) in seconds.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
TIER_CHANGE_JOB_CUSTOMERS = Counter(
    "campaign_tier_change_job_customers", "Customers re-assessed by tier change jobs."
)
TIER_CHANGE_JOB_MOVES = Counter(
    "campaign_tier_change_job_moves", "Customers moved by tier change jobs, by direction.", ["direction"]
)
TIER_CHANGE_JOBS_FINISHED = Counter(
    "campaign_tier_change_jobs_finished", "Tier change jobs finished, by final state.", ["state"]
)
# Issue 16: one series set per locale (bounded by CLDR's locales), never per merchant.
TRANSLATION_COMPLETENESS = Histogram(
    "campaign_translation_complete_ratio",
    "Fraction of tier names and perk labels present in a locale, one observation per locale per "
    "GetTranslationReport (merchants are not a label: the series stay bounded).",
    ["locale"],
    buckets=(0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0),
)
