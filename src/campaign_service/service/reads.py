"""Cache-aside reads of tiers: the serialized answer per display locale, from the cache when it
has it, else from the database and then into the cache (unless a write invalidated it meanwhile).

This is the only read path of GetVIPTier and ListVIPTiers; with no cache in use the lookup
simply finds nothing and hands out no ticket.

Scheduled changes (service/scheduled.py): a load answers the configuration as of now, with the
pending changes whose time has come applied, and says until when that answer holds (the next
pending tier change of the merchant). A fill then lives at most until that time (its TTL is cut
to it; nothing is filled within a second of it), and scheduling a change blocks the keys it
affects like any write, so no cached answer outlives an effective time. A read `as_of` a time
skips the cache.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from uuid import UUID

from campaign_service import context, metrics
from campaign_service.domain.locales import display_key
from campaign_service.domain.tiers import VIPTier, check_tier_id
from campaign_service.service.ports import AfterCommit, CachedView, EpochBump, ViewCache, ViewKey
from campaign_service.service.scheduled import ScheduledChanges
from campaign_service.service.tiers import TierService

RenderTier = Callable[[VIPTier, str], bytes]
RenderTiers = Callable[[Sequence[VIPTier], str], bytes]

_COUNTED = {
    (view, result): metrics.CACHE_REQUESTS.labels(view, result)
    for view in ("tier", "list")
    for result in ("hit", "miss", "bypass")
}


class TierReads:
    def __init__(
        self,
        tiers: TierService,
        cache: ViewCache,
        render_tier: RenderTier,
        render_tiers: RenderTiers,
        *,
        dated: ScheduledChanges | None = None,
        fill_ttl_s: int = 3600,
    ) -> None:
        self._tiers = tiers
        self._cache = cache
        self._render_tier = render_tier
        self._render_tiers = render_tiers
        self._dated = dated
        self._fill_ttl_s = fill_ttl_s

    async def tier(self, merchant_id: UUID, tier_id: str, locale: str, as_of: datetime | None = None) -> bytes:
        """One tier rendered for `locale` (as of a time: uncached); NotFound when the merchant has
        no such tier (then)."""
        check_tier_id(tier_id)
        key = ViewKey(merchant_id, tier_id, display_key(locale))
        if as_of is not None and self._dated is not None:
            tier, _ = await self._dated.tier_at(merchant_id, tier_id, as_of)
            return self._render_tier(tier, key.locale)

        async def load() -> tuple[bytes, datetime | None]:
            if self._dated is None:
                return self._render_tier(await self._tiers.get_tier(merchant_id, tier_id), key.locale), None
            tier, until = await self._dated.tier_at(merchant_id, tier_id)
            return self._render_tier(tier, key.locale), until

        return await self._read(key, "tier", load)

    async def tiers(self, merchant_id: UUID, locale: str, as_of: datetime | None = None) -> bytes:
        """All tiers of the merchant rendered for `locale` (as of a time: uncached)."""
        key = ViewKey(merchant_id, None, display_key(locale))
        if as_of is not None and self._dated is not None:
            return self._render_tiers((await self._dated.tiers_at(merchant_id, as_of)).tiers, key.locale)

        async def load() -> tuple[bytes, datetime | None]:
            if self._dated is None:
                return self._render_tiers(await self._tiers.list_tiers(merchant_id), key.locale), None
            view = await self._dated.tiers_at(merchant_id)
            return self._render_tiers(view.tiers, key.locale), view.valid_until

        return await self._read(key, "list", load)

    def _fill_ttl(self, until: datetime | None) -> int | None:
        """The TTL a fill may have: the cache's (None), or cut to end by `until` (whole seconds,
        rounded down; `fill_ttl_s` is the cache's TTL)."""
        if until is None or self._dated is None:
            return None
        left = (until - self._dated.now()).total_seconds()
        return max(min(self._fill_ttl_s, math.floor(left)), 0)

    async def _read(
        self, key: ViewKey, view: str, load: Callable[[], Awaitable[tuple[bytes, datetime | None]]]
    ) -> bytes:
        cached = await self._cache.lookup(key)
        if cached.value is not None:
            context.cache_result.set("hit")
            _COUNTED[view, "hit"].inc()
            return cached.value
        if cached.ticket is None:
            context.cache_result.set("none")
            _COUNTED[view, "bypass"].inc()
            return (await load())[0]
        context.cache_result.set("miss")
        _COUNTED[view, "miss"].inc()
        value, until = await load()
        ttl_s = self._fill_ttl(until)
        if ttl_s is None or ttl_s >= 1:  # else a change takes effect within the second: not worth caching
            await self._cache.fill(key, cached.ticket, value, ttl_s)
        return value


class NoCache:
    """The cache when caching is off: every lookup finds nothing and hands out no ticket."""

    async def lookup(self, key: ViewKey) -> CachedView:
        return CachedView()

    async def fill(self, key: ViewKey, ticket: str, value: bytes, ttl_s: int | None = None) -> bool:
        return False

    async def tiers_changing(
        self, merchant_id: UUID, tier_ids: Sequence[str], bump_cache_epoch: EpochBump
    ) -> AfterCommit:
        return _nothing


async def _nothing() -> None:
    return None
