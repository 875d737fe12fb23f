"""The read cache on a Redis Cluster of the test's own when the master of a merchant's slot is
SIGKILLed and its replica promoted: lookups come from PostgreSQL meanwhile, a write made during
the failover is never answered stale by any instance, and the cache is trusted again after it
(on a cold cache: the promoted replica may have missed deletions, so the epoch advances)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from campaign_service import context, metrics, redis_keys
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.redis.cache import RedisViewCache
from campaign_service.adapters.redis.client import RedisBreaker
from campaign_service.api.mapping import render_tier, render_tiers
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.reads import TierReads
from campaign_service.service.tiers import TierService
from tests.conftest import RedisClusterServers

pytestmark = pytest.mark.redis


async def test_failover_of_a_master_serves_nothing_stale(
    own_redis_cluster: RedisClusterServers,
    redis_view_cache: Callable[..., Awaitable[RedisViewCache]],
    app_pool: asyncpg.Pool[asyncpg.Record],
    new_merchant: Callable[[], Any],
) -> None:
    cluster = own_redis_cluster

    async def instance() -> tuple[RedisViewCache, TierService, TierReads]:
        cache = await redis_view_cache(
            "127.0.0.1",
            cluster.port(0),
            breaker=RedisBreaker(retry_after_s=0.05),
            lease_s=0.3,
            block_ttl_s=2,
            redis_timeout_ms=100,
            redis_cluster=True,
        )
        tiers = TierService(PgUnitOfWork(app_pool), [cache])
        return cache, tiers, TierReads(tiers, cache, render_tier, render_tiers)

    (cache_a, tiers_a, reads_a), (cache_b, _, reads_b) = await instance(), await instance()
    # The writer is a third instance that dies after its write: the deletion it could not make
    # while the master was down is never made, so the promoted replica keeps the old answer.
    writer_cache = await redis_view_cache(
        "127.0.0.1",
        cluster.port(0),
        breaker=RedisBreaker(retry_after_s=600),  # after the failed block, it tries Redis no more
        lease_s=0.3,
        block_ttl_s=2,
        redis_timeout_ms=100,
        redis_cluster=True,
        background=False,
    )
    writer = TierService(PgUnitOfWork(app_pool), [writer_cache])
    merchant = await new_merchant()
    await tiers_a.create(merchant, "gold", TierSpec(name="Gold"))
    for reads in (reads_a, reads_a, reads_b):
        await reads.tier(merchant, "gold", "")
    assert context.cache_result.get() == "hit"  # B answers what A filled

    # B reads all the time; once the write below is acknowledged, "Gold" is a stale answer.
    acknowledged = asyncio.Event()
    seen: list[tuple[bool, str, str]] = []

    async def read_through_b() -> None:
        while True:
            after = acknowledged.is_set()
            name = pb.VIPTier.FromString(await reads_b.tier(merchant, "gold", "")).name
            seen.append((after, name, context.cache_result.get()))
            await asyncio.sleep(0.005)

    replaced = metrics.CACHE_EPOCH_ADVANCES.labels("redis_replaced")._value.get()
    reader = asyncio.create_task(read_through_b())
    try:
        cluster.kill(cluster.node_serving(redis_keys.tier_cache(merchant, "gold")))
        await writer.update(merchant, "gold", TierSpec(name="Platinum"), ["name"])  # the write succeeds
        acknowledged.set()
        deadline = time.monotonic() + 30
        while not (cache_a.trusted and cache_b.trusted and seen[-1][2] == "hit"):
            assert time.monotonic() < deadline, (cache_a.trusted, cache_b.trusted, seen[-5:])
            assert pb.VIPTier.FromString(await reads_a.tier(merchant, "gold", "")).name == "Platinum"
            await asyncio.sleep(0.05)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    stale = [s for s in seen if s[0] and s[1] != "Platinum"]
    assert not stale, stale
    during = {result for after, _, result in seen if after}
    assert "none" in during  # the failover was served from PostgreSQL, not from Redis
    assert "hit" in during  # and the cache serves again afterwards
    # The promoted replica is not the Redis the record was confirmed on: the epoch advanced.
    assert metrics.CACHE_EPOCH_ADVANCES.labels("redis_replaced")._value.get() > replaced
    assert writer_cache.pending == 2  # the writer never deleted the old answer: the epoch did the work
