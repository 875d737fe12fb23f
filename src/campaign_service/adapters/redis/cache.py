"""The shared read cache on Redis, keyed as the plan says (`cache:{merchant_id}:{tier_id}`,
`cache:{merchant_id}:tiers`), one hash per key with a field per view and display locale.

Why fills carry a ticket: a reader that missed, read the old row, and is slow to store it must
not overwrite the invalidation of a write that committed meanwhile. The lookup that misses hands
out the key's generation (creating one if the key is absent); invalidation deletes the key, and
so its generation; a fill only lands while the generation is still the one handed out. The
lookup comes before the database read, so any value read before a commit fails that check.

When an invalidation cannot reach Redis, the key stays pending: this instance bypasses the cache
until a background retry has delivered every pending invalidation, so nothing stale survives an
outage (a Redis with persistence would otherwise come back with the old answers).

Pending invalidations live only in this process, and a process can also die between a commit and
its invalidation; a successor cannot know what was left undelivered. So a new instance starts by
purging every cache key (bypassing the cache until that got through): a start costs a cold
cache, never a stale answer for a write that was acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from uuid import UUID

import structlog
from redis.asyncio import Redis

from campaign_service import metrics, redis_keys
from campaign_service.adapters.redis.client import REDIS_FAILURES, RedisBreaker, unique_token
from campaign_service.adapters.redis.pipe import RedisPipe
from campaign_service.service.ports import CachedView, ViewKey

log = structlog.get_logger(__name__)

# KEYS[1] cache key; ARGV: field, generation field, fresh ticket, ticket TTL.
# Returns {value} on a hit, {false, generation} on a miss.
_LOOKUP = """
local found = redis.call('HMGET', KEYS[1], ARGV[1], ARGV[2])
if found[1] then return {found[1]} end
if found[2] then return {false, found[2]} end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {false, ARGV[3]}
"""
# KEYS[1] cache key; ARGV: generation field, ticket, field, value, cache TTL. 1 stored, 0 refused.
_FILL = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if redis.call('HLEN', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
"""
_UNLINK_BATCH = 500


class RedisViewCache:
    def __init__(
        self, client: Redis, pipe: RedisPipe, breaker: RedisBreaker, ttl_s: int, max_pending: int = 10_000
    ) -> None:
        self._client = client
        self._breaker = breaker
        self._ttl_s = ttl_s
        self._max_pending = max_pending
        # Per-request calls go through the pipelined connection; invalidations through the client.
        self._lookup = pipe.script(_LOOKUP)
        self._fill = pipe.script(_FILL)
        # Keys whose invalidation has not reached Redis, with a counter so that a delivery that was
        # in flight before a newer write does not clear the newer one.
        self._pending: dict[str, int] = {}
        self._seq = itertools.count(1)
        # Delete every cache key on recovery: too many pending keys to remember, or (at start) the
        # invalidations a previous instance may have died with. Like the keys, numbered (0: none).
        self._purge_all = next(self._seq)

    @property
    def pending(self) -> int:
        return len(self._pending) + (1 if self._purge_all else 0)

    async def lookup(self, key: ViewKey) -> CachedView:
        if self._pending or self._purge_all or not self._breaker.allows():
            return CachedView()
        name, slot = redis_keys.view_slot(key)
        try:
            found = await self._lookup(
                keys=[name], args=[slot, redis_keys.GENERATION, unique_token(), redis_keys.TICKET_TTL_S]
            )
        except REDIS_FAILURES as exc:
            self._breaker.failed("lookup", exc)
            return CachedView()
        self._breaker.succeeded()
        assert isinstance(found, list)
        if found[0] is not None:
            return CachedView(value=found[0])
        return CachedView(ticket=found[1].decode())

    async def fill(self, key: ViewKey, ticket: str, value: bytes) -> bool:
        if self._pending or self._purge_all or not self._breaker.allows():
            return False
        name, slot = redis_keys.view_slot(key)
        try:
            stored = await self._fill(keys=[name], args=[redis_keys.GENERATION, ticket, slot, value, self._ttl_s])
        except REDIS_FAILURES as exc:
            self._breaker.failed("fill", exc)
            return False
        if not stored:
            metrics.CACHE_FILLS_REJECTED.inc()
        return bool(stored)

    async def tiers_changed(self, merchant_id: UUID, tier_ids: Sequence[str]) -> None:
        """Called after the commit; never raises, an undeliverable invalidation stays pending."""
        for name in redis_keys.invalidated_by(merchant_id, tier_ids):
            self._pending[name] = next(self._seq)
        if len(self._pending) > self._max_pending:
            log.warning("too many pending cache invalidations; the whole cache is purged on recovery")
            self._pending.clear()
            self._purge_all = next(self._seq)
        await self.deliver()

    async def deliver(self) -> bool:
        """Sends the pending invalidations to Redis; True when none is left."""
        if (self._pending or self._purge_all) and self._breaker.allows():
            try:
                if self._purge_all:
                    await self._purge()
                while self._pending:
                    batch = list(itertools.islice(self._pending.items(), _UNLINK_BATCH))
                    await self._client.unlink(*(name for name, _ in batch))
                    for name, seq in batch:
                        if self._pending.get(name) == seq:
                            del self._pending[name]
            except REDIS_FAILURES as exc:
                self._breaker.failed("invalidate", exc)
            else:
                self._breaker.succeeded()
        metrics.CACHE_PENDING_INVALIDATIONS.set(self.pending)
        return not self.pending

    async def redeliver_forever(self, interval_s: float) -> None:
        """Background task: retries pending invalidations every `interval_s` (one try each)."""
        while True:
            await asyncio.sleep(interval_s)
            if self.pending:
                delivered = await self.deliver()
                metrics.CACHE_INVALIDATION_RETRIES.labels("ok" if delivered else "failed").inc()
                if delivered:
                    log.info("pending cache invalidations delivered")

    async def _purge(self) -> None:
        requested = self._purge_all
        batch: list[bytes] = []
        async for name in self._client.scan_iter(match=redis_keys.CACHE_PATTERN, count=1000):
            batch.append(name)
            if len(batch) >= _UNLINK_BATCH:
                await self._client.unlink(*batch)
                batch.clear()
        if batch:
            await self._client.unlink(*batch)
        if self._purge_all == requested:  # else a newer request came in meanwhile: purge again
            self._purge_all = 0
