"""Every Redis key the service reads or writes, in the plan's formats, with their lifetimes.

The braces of the plan's formats are read literally: `{<merchant_id>}` is a Redis Cluster hash
tag, so every key of one merchant lies in one slot, and each script (which touches the keys of
one merchant) runs on one node. Keys written before the tags (`cache:<merchant_id>:...`) are
never read again and expire on their own: cache entries within CAMPAIGN_CACHE_TTL_S, rate-limit
logs within 60 s, processed-event markers within 24 h (processed_events dedupes meanwhile).
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from campaign_service.service.ports import ViewKey

# Cached read answers. One hash per key: the field GENERATION holds the fill ticket (see
# adapters/redis/cache.py) and one field per view and display locale holds a serialized answer.
# A tier may be called `tiers`; its key then equals the list key, which is harmless because the
# fields differ (TIER_FIELD vs LIST_FIELD) and a change to any tier invalidates the list anyway.
CACHE_PATTERN = "cache:*"
# "<epoch> <run_id>:<master_replid>": the cache epoch last confirmed on this Redis (see
# adapters/redis/cache.py); no merchant's key can take this name (theirs start with `{`). In a
# cluster each master holds its own, under a hash tag that lands on it (`cache_epoch`).
CACHE_EPOCH = "cache:epoch"
GENERATION = "gen"
TIER_FIELD = "tier:"
LIST_FIELD = "list:"
# A key holding only a ticket (nothing filled yet, e.g. a lookup of a missing tier) expires after
# this; longer than any database read (statement timeout), and a fill after it is refused anyway.
# The first fill gives the key the full cache TTL.
TICKET_TTL_S = 60

# The plan keeps a rate-limit key for 60 s; the window itself is the configured one (1 s).
RATE_LIMIT_TTL_S = 60
# Processed-event markers: a fast path in front of the processed_events table (24 h).
PROCESSED_TTL_S = 24 * 3600


def cache_epoch(tag: str | None) -> str:
    """The epoch record on the node whose keys carry hash tag `tag` (None: a single Redis)."""
    return CACHE_EPOCH if tag is None else f"{CACHE_EPOCH}:{{{tag}}}"


def tier_cache(merchant_id: UUID, tier_id: str) -> str:
    """GetVIPTier answers of one tier."""
    return f"cache:{{{merchant_id}}}:{tier_id}"


def tier_list_cache(merchant_id: UUID) -> str:
    """ListVIPTiers answers of one merchant."""
    return f"cache:{{{merchant_id}}}:tiers"


def view_slot(key: ViewKey) -> tuple[str, str]:
    """The (key, hash field) a cached answer lives in."""
    if key.tier_id is None:
        return tier_list_cache(key.merchant_id), LIST_FIELD + key.locale
    return tier_cache(key.merchant_id, key.tier_id), TIER_FIELD + key.locale


def invalidated_by(merchant_id: UUID, tier_ids: Iterable[str]) -> list[str]:
    """The cache keys a change to `tier_ids` makes stale: those tiers and the merchant's list."""
    return list(dict.fromkeys([*(tier_cache(merchant_id, t) for t in tier_ids), tier_list_cache(merchant_id)]))


def rate_limit(merchant_id: UUID) -> str:
    """The requests of one merchant in the current window, shared by every instance."""
    return f"rate_limit:{{{merchant_id}}}:campaign"


def processed(merchant_id: UUID, event_id: UUID) -> str:
    """Marks a consumed event as processed (fast path only; processed_events is the truth)."""
    return f"processed:{{{merchant_id}}}:{event_id}"
