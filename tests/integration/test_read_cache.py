"""Cache-aside reads on the real PostgreSQL and the real Redis (and the in-process cache, which
must keep the same promises): hits, invalidation on every write path, locales, TTL, and the
read-old / invalidate / write-old race."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
import pytest
import redis.asyncio as aioredis

from campaign_service import context, redis_keys
from campaign_service.adapters.memory.cache import MemoryViewCache
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.redis.cache import RedisViewCache
from campaign_service.api.mapping import render_tier, render_tiers
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.errors import NotFound
from campaign_service.domain.tiers import TierSpec
from campaign_service.service.errors import Unavailable
from campaign_service.service.ports import ViewCache, ViewKey
from campaign_service.service.reads import TierReads
from campaign_service.service.tiers import TierService
from campaign_service.service.unit_of_work import TenantUnitOfWork

GOLD = TierSpec(
    name="Gold",
    min_points=1000,
    translations={"ar": "ذهبي", "he": "זהב"},
    benefits=Benefits(custom_perks=(Perk("lounge", {"en": "Lounge", "ar": "صالة"}),)),
)
SILVER = TierSpec(name="Silver", min_points=100, is_default=True)


@pytest.fixture(params=["redis", "memory"])
async def view_cache(
    request: pytest.FixtureRequest, redis_view_cache: Callable[..., Awaitable[RedisViewCache]]
) -> ViewCache:
    if request.param == "memory":
        return MemoryViewCache(ttl_s=3600, max_bytes=1 << 20)
    return await redis_view_cache()


@pytest.fixture
def reads_on(app_pool: Any) -> Callable[..., tuple[TierService, TierReads]]:
    def make(cache: ViewCache, uow: Any = None) -> tuple[TierService, TierReads]:
        tiers = TierService(uow or PgUnitOfWork(app_pool), [cache])
        return tiers, TierReads(tiers, cache, render_tier, render_tiers)

    return make


async def fresh_tier(tiers: TierService, merchant: UUID, tier_id: str, locale: str) -> pb.VIPTier:
    return pb.VIPTier.FromString(render_tier(await tiers.get_tier(merchant, tier_id), locale))


async def fresh_list(tiers: TierService, merchant: UUID, locale: str) -> pb.ListVIPTiersResponse:
    return pb.ListVIPTiersResponse.FromString(render_tiers(await tiers.list_tiers(merchant), locale))


async def test_second_read_is_served_from_the_cache(
    view_cache: ViewCache,
    reads_on: Callable[..., tuple[TierService, TierReads]],
    new_merchant: Callable[[], Any],
    owner_conn: asyncpg.Connection[Any],
) -> None:
    merchant = await new_merchant()
    tiers, reads = reads_on(view_cache)
    await tiers.create(merchant, "gold", GOLD)

    first = pb.VIPTier.FromString(await reads.tier(merchant, "gold", "ar"))
    assert context.cache_result.get() == "miss"
    assert (first.display_name, first.resolved_locale) == ("ذهبي", "ar")
    # A change the service does not know about shows that the next answer comes from the cache.
    await owner_conn.execute("UPDATE vip_tiers SET discount_percentage = 42 WHERE merchant_id = $1", merchant)
    second = pb.VIPTier.FromString(await reads.tier(merchant, "gold", "ar"))
    assert context.cache_result.get() == "hit"
    assert second == first
    # ar-SA is a CLDR locale a merchant may store text in: cached apart (issue 16), and the same answer.
    assert pb.VIPTier.FromString(await reads.tier(merchant, "gold", "ar-SA")).display_name == first.display_name

    listed = pb.ListVIPTiersResponse.FromString(await reads.tiers(merchant, "he"))
    assert context.cache_result.get() == "miss"
    assert [t.display_name for t in listed.tiers] == ["זהב"]
    await reads.tiers(merchant, "he")
    assert context.cache_result.get() == "hit"


async def test_locales_are_cached_apart(
    view_cache: ViewCache, reads_on: Callable[..., tuple[TierService, TierReads]], new_merchant: Callable[[], Any]
) -> None:
    merchant = await new_merchant()
    tiers, reads = reads_on(view_cache)
    await tiers.create(merchant, "gold", GOLD)
    for locale, name, perk in [
        ("ar", "ذهبي", "صالة"),
        ("he", "זהב", "Lounge"),
        ("fr", "Gold", "Lounge"),
        ("", "Gold", "Lounge"),
    ]:
        for _ in range(2):
            got = pb.VIPTier.FromString(await reads.tier(merchant, "gold", locale))
            assert (got.display_name, got.display_perks[0].label) == (name, perk)
        assert context.cache_result.get() == "hit"


WRITES: dict[str, Callable[[TierService, UUID], Any]] = {
    "update name": lambda t, m: t.update(m, "gold", TierSpec(name="Platinum"), ["name"]),
    "update translations": lambda t, m: t.update(
        m, "gold", TierSpec(name="", translations={"ar": "بلاتيني"}), ["translations"]
    ),
    "update perks": lambda t, m: t.update(
        m, "gold", TierSpec(name="", benefits=Benefits(custom_perks=(Perk("spa", {"ar": "منتجع"}),))), ["benefits"]
    ),
    "new default clears silver": lambda t, m: t.update(m, "gold", TierSpec(name="", is_default=True), ["is_default"]),
    "create bronze": lambda t, m: t.create(m, "bronze", TierSpec(name="Bronze", is_default=True)),
    "delete gold": lambda t, m: t.delete(m, "gold"),
}


LOCALES = ["", "ar", "he"]


async def gold_and_silver_cached(tiers: TierService, reads: TierReads, merchant: UUID) -> None:
    """Both tiers, and every cache entry a write to them could make stale, filled."""
    await tiers.create(merchant, "gold", GOLD)
    await tiers.create(merchant, "silver", SILVER)
    for locale in LOCALES:
        for tier_id in ("gold", "silver"):
            await reads.tier(merchant, tier_id, locale)
        await reads.tiers(merchant, locale)


async def assert_reads_are_fresh(tiers: TierService, reads: TierReads, merchant: UUID) -> None:
    for locale in LOCALES:
        for tier_id in ("gold", "silver", "bronze"):
            try:
                expected = await fresh_tier(tiers, merchant, tier_id, locale)
            except NotFound:
                with pytest.raises(NotFound):
                    await reads.tier(merchant, tier_id, locale)
                continue
            assert pb.VIPTier.FromString(await reads.tier(merchant, tier_id, locale)) == expected
        assert pb.ListVIPTiersResponse.FromString(await reads.tiers(merchant, locale)) == await fresh_list(
            tiers, merchant, locale
        )


@pytest.mark.parametrize("write", list(WRITES))
async def test_every_write_path_invalidates(
    view_cache: ViewCache,
    reads_on: Callable[..., tuple[TierService, TierReads]],
    new_merchant: Callable[[], Any],
    write: str,
) -> None:
    merchant = await new_merchant()
    tiers, reads = reads_on(view_cache)
    await gold_and_silver_cached(tiers, reads, merchant)
    await WRITES[write](tiers, merchant)
    await assert_reads_are_fresh(tiers, reads, merchant)


class AnswerLostUnitOfWork:
    """PostgreSQL unit of work whose write transactions commit and then fail as Unavailable, as
    when the connection dies with the commit's answer in flight (PostgreSQL killed right after
    it committed): the caller cannot know that the change landed."""

    def __init__(self, inner: PgUnitOfWork) -> None:
        self._inner = inner

    @asynccontextmanager
    async def __call__(self, merchant_id: UUID, *, readonly: bool = False) -> AsyncIterator[TenantUnitOfWork]:
        async with self._inner(merchant_id, readonly=readonly) as tx:
            yield tx
        if not readonly:
            raise Unavailable("database unavailable (connection lost)")


@pytest.mark.parametrize("write", list(WRITES))
async def test_write_whose_commit_answer_was_lost_still_invalidates(
    view_cache: ViewCache,
    reads_on: Callable[..., tuple[TierService, TierReads]],
    app_pool: asyncpg.Pool[asyncpg.Record],
    new_merchant: Callable[[], Any],
    write: str,
) -> None:
    merchant = await new_merchant()
    tiers, reads = reads_on(view_cache)
    await gold_and_silver_cached(tiers, reads, merchant)
    answer_lost, _ = reads_on(view_cache, AnswerLostUnitOfWork(PgUnitOfWork(app_pool)))
    with pytest.raises(Unavailable):
        await WRITES[write](answer_lost, merchant)
    await assert_reads_are_fresh(tiers, reads, merchant)  # the change landed: no answer from before it


class GatedUnitOfWork:
    """PostgreSQL unit of work whose read transactions, once set up, wait at `gate` after their
    read: the reader holds an old row while the test commits a write."""

    def __init__(self, inner: PgUnitOfWork) -> None:
        self._inner = inner
        self.gate: asyncio.Event | None = None
        self.read_done = asyncio.Event()

    @asynccontextmanager
    async def __call__(self, merchant_id: UUID, *, readonly: bool = False) -> AsyncIterator[TenantUnitOfWork]:
        async with self._inner(merchant_id, readonly=readonly) as tx:
            yield tx
        if readonly and self.gate is not None:
            self.read_done.set()
            await self.gate.wait()


@pytest.mark.parametrize("view", ["tier", "list"])
async def test_value_read_before_a_write_is_not_cached_after_it(
    view_cache: ViewCache,
    reads_on: Callable[..., tuple[TierService, TierReads]],
    app_pool: asyncpg.Pool[asyncpg.Record],
    new_merchant: Callable[[], Any],
    view: str,
) -> None:
    merchant = await new_merchant()
    writer, _ = reads_on(view_cache)
    gated = GatedUnitOfWork(PgUnitOfWork(app_pool))
    _, reads = reads_on(view_cache, gated)
    await writer.create(merchant, "gold", GOLD)

    def read() -> Any:
        return reads.tier(merchant, "gold", "") if view == "tier" else reads.tiers(merchant, "")

    def name(answer: bytes) -> str:
        if view == "tier":
            return pb.VIPTier.FromString(answer).name
        return pb.ListVIPTiersResponse.FromString(answer).tiers[0].name

    gated.gate = asyncio.Event()
    slow_reader = asyncio.create_task(read())
    await gated.read_done.wait()  # the reader has its ticket and the old row
    await writer.update(merchant, "gold", TierSpec(name="Platinum"), ["name"])  # commit, invalidate
    gated.gate.set()
    assert name(await slow_reader) == "Gold"  # that request began before the write: fine
    gated.gate = None

    assert name(await read()) == "Platinum"
    assert context.cache_result.get() == "miss"  # the slow reader's fill was refused


async def test_update_and_read_storm_leaves_nothing_stale(
    view_cache: ViewCache, reads_on: Callable[..., tuple[TierService, TierReads]], new_merchant: Callable[[], Any]
) -> None:
    merchant = await new_merchant()
    # Two "instances": separate services and readers on the same cache.
    (writer_a, reads_a), (writer_b, reads_b) = reads_on(view_cache), reads_on(view_cache)
    await writer_a.create(merchant, "gold", GOLD)
    rng = random.Random(7)
    stop = asyncio.Event()

    async def write(writer: TierService, base: int) -> None:
        for i in range(25):
            await writer.update(merchant, "gold", TierSpec(name="", min_points=base + i), ["min_points"])
            await asyncio.sleep(0)
        stop.set()

    async def storm(reads: TierReads) -> None:
        while not stop.is_set():
            locale = rng.choice(["", "ar", "he"])
            await (reads.tier(merchant, "gold", locale) if rng.random() < 0.7 else reads.tiers(merchant, locale))
            await asyncio.sleep(0)  # an in-process hit never suspends; let the writers run

    await asyncio.gather(write(writer_a, 2000), write(writer_b, 5000), *(storm(r) for r in [reads_a, reads_b] * 4))
    for reads in (reads_a, reads_b):
        for locale in ("", "ar", "he"):
            assert pb.VIPTier.FromString(await reads.tier(merchant, "gold", locale)) == await fresh_tier(
                writer_a, merchant, "gold", locale
            )
            assert pb.ListVIPTiersResponse.FromString(await reads.tiers(merchant, locale)) == await fresh_list(
                writer_a, merchant, locale
            )


async def test_redis_keys_are_the_plans(
    reads_on: Callable[[ViewCache], tuple[TierService, TierReads]],
    new_merchant: Callable[[], Any],
    redis_client: aioredis.Redis,
    redis_view_cache: Callable[..., Awaitable[RedisViewCache]],
) -> None:
    cache = await redis_view_cache()
    merchant = await new_merchant()
    tiers, reads = reads_on(cache)
    await tiers.create(merchant, "gold", GOLD)
    await reads.tier(merchant, "gold", "ar")
    await reads.tiers(merchant, "")
    assert set(await redis_client.hkeys(f"cache:{{{merchant}}}:gold")) == {b"gen", b"ep", b"tier:ar"}
    assert set(await redis_client.hkeys(f"cache:{{{merchant}}}:tiers")) == {b"gen", b"ep", b"list:"}
    assert 3590 <= await redis_client.ttl(f"cache:{{{merchant}}}:gold") <= 3600
    # A lookup of a missing tier leaves only a short-lived ticket behind.
    with pytest.raises(NotFound):
        await reads.tier(merchant, "nope", "")
    assert set(await redis_client.hkeys(f"cache:{{{merchant}}}:nope")) == {b"gen", b"ep"}
    assert 0 < await redis_client.ttl(f"cache:{{{merchant}}}:nope") <= redis_keys.TICKET_TTL_S


async def test_redis_entries_expire_after_the_ttl(
    reads_on: Callable[..., tuple[TierService, TierReads]],
    new_merchant: Callable[[], Any],
    redis_client: aioredis.Redis,
    redis_view_cache: Callable[..., Awaitable[RedisViewCache]],
) -> None:
    merchant = await new_merchant()
    tiers, reads = reads_on(await redis_view_cache(ttl_s=1))
    await tiers.create(merchant, "gold", GOLD)
    await reads.tier(merchant, "gold", "")
    await reads.tier(merchant, "gold", "")
    assert context.cache_result.get() == "hit"
    assert 0 < await redis_client.pttl(f"cache:{{{merchant}}}:gold") <= 1000
    await asyncio.sleep(1.1)
    assert not await redis_client.exists(f"cache:{{{merchant}}}:gold")
    await reads.tier(merchant, "gold", "")
    assert context.cache_result.get() == "miss"


async def test_memory_entries_expire_after_the_ttl() -> None:
    now = [0.0]
    cache = MemoryViewCache(ttl_s=3600, max_bytes=1 << 20, clock=lambda: now[0])
    key = ViewKey(UUID(int=1), "gold", "")
    miss = await cache.lookup(key)
    assert miss.ticket is not None
    now[0] = 30.0  # the TTL counts from the fill
    assert await cache.fill(key, miss.ticket, b"answer")
    now[0] = 3629.0
    assert (await cache.lookup(key)).value == b"answer"
    now[0] = 3630.0
    assert (await cache.lookup(key)).value is None


async def test_memory_cache_stays_within_its_byte_budget() -> None:
    cache = MemoryViewCache(ttl_s=3600, max_bytes=64 * 1024)
    merchant = UUID(int=2)
    for i in range(200):
        key = ViewKey(merchant, f"t{i}", "")
        found = await cache.lookup(key)
        assert found.ticket is not None
        await cache.fill(key, found.ticket, b"x" * 1000)
        assert cache.size_bytes <= 64 * 1024
    # the most recently used survive, the oldest went first
    assert (await cache.lookup(ViewKey(merchant, "t199", ""))).value == b"x" * 1000
    assert (await cache.lookup(ViewKey(merchant, "t0", ""))).value is None
