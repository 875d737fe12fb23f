"""Cache-aside reads of tiers: the serialized answer per display locale, from the cache when it
has it, else from the database and then into the cache (unless a write invalidated it meanwhile).

This is the only read path of GetVIPTier and ListVIPTiers; with no cache in use the lookup
simply finds nothing and hands out no ticket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

from campaign_service import context, metrics
from campaign_service.domain.locales import display_key
from campaign_service.domain.tiers import VIPTier, check_tier_id
from campaign_service.service.ports import AfterCommit, CachedView, EpochBump, ViewCache, ViewKey
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
        self, tiers: TierService, cache: ViewCache, render_tier: RenderTier, render_tiers: RenderTiers
    ) -> None:
        self._tiers = tiers
        self._cache = cache
        self._render_tier = render_tier
        self._render_tiers = render_tiers

    async def tier(self, merchant_id: UUID, tier_id: str, locale: str) -> bytes:
        """One tier rendered for `locale`; NotFound when the merchant has no such tier."""
        check_tier_id(tier_id)
        key = ViewKey(merchant_id, tier_id, display_key(locale))

        async def load() -> bytes:
            return self._render_tier(await self._tiers.get_tier(merchant_id, tier_id), key.locale)

        return await self._read(key, "tier", load)

    async def tiers(self, merchant_id: UUID, locale: str) -> bytes:
        """All tiers of the merchant rendered for `locale`."""
        key = ViewKey(merchant_id, None, display_key(locale))

        async def load() -> bytes:
            return self._render_tiers(await self._tiers.list_tiers(merchant_id), key.locale)

        return await self._read(key, "list", load)

    async def _read(self, key: ViewKey, view: str, load: Callable[[], Awaitable[bytes]]) -> bytes:
        cached = await self._cache.lookup(key)
        if cached.value is not None:
            context.cache_result.set("hit")
            _COUNTED[view, "hit"].inc()
            return cached.value
        if cached.ticket is None:
            context.cache_result.set("none")
            _COUNTED[view, "bypass"].inc()
            return await load()
        context.cache_result.set("miss")
        _COUNTED[view, "miss"].inc()
        value = await load()
        await self._cache.fill(key, cached.ticket, value)
        return value


class NoCache:
    """The cache when caching is off: every lookup finds nothing and hands out no ticket."""

    async def lookup(self, key: ViewKey) -> CachedView:
        return CachedView()

    async def fill(self, key: ViewKey, ticket: str, value: bytes) -> bool:
        return False

    async def tiers_changing(
        self, merchant_id: UUID, tier_ids: Sequence[str], bump_cache_epoch: EpochBump
    ) -> AfterCommit:
        return _nothing


async def _nothing() -> None:
    return None
