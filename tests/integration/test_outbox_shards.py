"""The outbox sharded by key (migration 0050): claims of different shards run at once, in one
relay and across relays, and the events of each key still reach Kafka in their order."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec
from campaign_service.adapters.postgres.outbox import SHARDS, PgOutbox
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.domain.events import OutboxMessage, tier_assigned
from campaign_service.events.ports import EventPublisher
from campaign_service.events.relay import OutboxRelay, RelaySettings
from tests.conftest import OwnDatabase, required_env
from tests.integration.test_outbox_relay import publisher

pytestmark = pytest.mark.kafka


async def seed(own: OwnDatabase, keys: int, per_key: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """`keys` customers of one merchant with `per_key` vip_tier.assigned each; the n-th event of a
    key carries program_version n. Inserted round-robin over the keys, so that the rows of one key
    are far apart in the outbox, as a busy service writes them."""
    merchant = await own.merchant()
    customers = [uuid.uuid4() for _ in range(keys)]
    rows = []
    for n in range(per_key):
        for customer in customers:
            m = tier_assigned(
                event_id=uuid.uuid4(),
                merchant_id=merchant,
                customer_id=customer,
                tier_id=f"tier{n}",
                assigned_at=datetime.now(UTC),
                correlation_id="shards",
                cause_event_id=None,
                program_version=n,
            )
            rows.append((m.event_id, m.merchant_id, m.topic, m.key, m.payload, m.headers))
    await own.su.executemany(
        "INSERT INTO outbox_events (event_id, merchant_id, topic, key, payload, headers)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        rows,
    )
    return merchant, customers


class Counting:
    """A publisher that counts what it published (to show that every relay took part)."""

    def __init__(self, inner: EventPublisher) -> None:
        self.inner = inner
        self.published = 0

    async def publish(self, batch: Sequence[OutboxMessage]) -> list[str | None]:
        results = await self.inner.publish(batch)
        self.published += sum(1 for r in results if r is None)
        await asyncio.sleep(0)  # let the other relay's claims run between ours
        return results

    async def close(self) -> None:
        await self.inner.close()


async def pending(own: OwnDatabase) -> int:
    return int(await own.su.fetchval("SELECT count(*) FROM outbox_events WHERE published_at IS NULL"))


async def test_each_key_stays_in_order_when_two_relays_publish_shards_in_parallel(
    own_db: OwnDatabase, avro_codec: AvroWireCodec, read_topic: Any
) -> None:
    keys, per_key = 200, 8
    reader = read_topic(topics.VIP_TIER_ASSIGNED)
    merchant, customers = await seed(own_db, keys, per_key)
    pools = [await create_pool(own_db.db.relay_dsn, min_size=1, max_size=4) for _ in range(2)]
    publishers = [Counting(publisher(avro_codec, required_env("KAFKA_BROKER"))) for _ in range(2)]
    # Small claims of 2 shards, 2 in flight per relay: many claims, of both relays, interleave.
    relays = [
        OutboxRelay(PgOutbox(pool, shards_per_claim=2), pub, RelaySettings(batch_size=40, concurrency=2))
        for pool, pub in zip(pools, publishers, strict=True)
    ]
    stop = asyncio.Event()
    running = [asyncio.create_task(r.run(stop)) for r in relays]
    try:
        for _ in range(600):
            if await pending(own_db) == 0:
                break
            await asyncio.sleep(0.1)
        assert await pending(own_db) == 0, "not published within 60 s"
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*running), 30)
        for pub in publishers:
            await pub.close()
        for pool in pools:
            await pool.close()
    assert all(p.published > 0 for p in publishers), [p.published for p in publishers]
    assert sum(p.published for p in publishers) == keys * per_key

    def mine(got: list[Any]) -> list[Any]:
        return [r for r in got if r.payload and str(r.payload["merchant_id"]) == str(merchant)]

    received = mine(await reader.wait_for(lambda got: len(mine(got)) >= keys * per_key, within=60))
    versions: dict[str, list[int]] = defaultdict(list)
    for r in received:  # in offset order within each partition, and a key has one partition
        versions[r.payload["customer_id"]].append(r.payload["program_version"])
    assert set(versions) == {str(c) for c in customers}
    out_of_order = {c: v for c, v in versions.items() if v != list(range(per_key))}
    assert not out_of_order, f"{len(out_of_order)} keys out of order, e.g. {next(iter(out_of_order.items()))}"


async def test_a_shard_is_held_by_one_claim_and_gives_its_oldest_rows_first(own_db: OwnDatabase) -> None:
    await seed(own_db, keys=200, per_key=3)
    assert await own_db.su.fetchval("SELECT count(DISTINCT shard) FROM outbox_events") == SHARDS
    order = {r["event_id"]: r["seq"] for r in await own_db.su.fetch("SELECT event_id, seq FROM outbox_events")}
    greedy, other = PgOutbox(own_db.relay_pool, shards_per_claim=SHARDS), PgOutbox(own_db.relay_pool)
    async with greedy.claim(2 * SHARDS) as first, other.claim(1000) as second:
        # the first claim holds every shard (2 rows of each): the second gets no row, not even of
        # the keys the first did not reach, and says that rows wait
        assert (len(first.messages), first.more) == (2 * SHARDS, True)
        assert (list(second.messages), second.more) == ([], True)
    store = PgOutbox(own_db.relay_pool, shards_per_claim=4)
    async with store.claim(SHARDS) as claim:
        # no backlog seen yet: every shard with rows (one row each, the limit), so the claim is full
        assert (len(await shards_of(own_db, claim.messages)), claim.more) == (SHARDS, True)
    async with store.claim(1000) as claim:
        # a backlog: the claim keeps to its 4 shards and leaves the others to other claims
        assert len(await shards_of(own_db, claim.messages)) == 4
        per_key: dict[str, list[int]] = defaultdict(list)
        for m in claim.messages:
            per_key[m.key].append(order[m.event_id])
        assert all(seqs == sorted(seqs) and len(seqs) == 3 for seqs in per_key.values())


async def shards_of(own: OwnDatabase, messages: Sequence[OutboxMessage]) -> set[int]:
    rows = await own.su.fetch(
        "SELECT DISTINCT shard FROM outbox_events WHERE event_id = ANY($1::uuid[])", [m.event_id for m in messages]
    )
    return {r["shard"] for r in rows}


async def test_without_a_backlog_one_claim_takes_every_free_shard(own_db: OwnDatabase) -> None:
    """Low rates: a consumer batch's rows spread over all shards, and one claim publishes them all
    (4 shards per claim took 4 claims in turn: the relay's share of bench.points_latency)."""
    await seed(own_db, keys=200, per_key=1)
    store = PgOutbox(own_db.relay_pool, shards_per_claim=4)
    async with store.claim(SHARDS) as full:  # one row of each shard: full, so a backlog
        assert (len(await shards_of(own_db, full.messages)), full.more) == (SHARDS, True)
        await full.mark_published([m.event_id for m in full.messages])
    async with store.claim(1000) as backlog:  # 4 shards, all their rows: not full
        assert (len(await shards_of(own_db, backlog.messages)), backlog.more) == (4, True)
        await backlog.mark_published([m.event_id for m in backlog.messages])
    async with store.claim(1000) as rest:  # no backlog any more: every shard left, in one claim
        assert (len(await shards_of(own_db, rest.messages)), rest.more) == (SHARDS - 4, False)
        await rest.mark_published([m.event_id for m in rest.messages])
    await seed(own_db, keys=200, per_key=1)
    async with store.claim(1000) as again:
        assert (len(await shards_of(own_db, again.messages)), again.more) == (SHARDS, False)


async def test_a_relay_of_before_the_shards_keeps_sharded_claims_out(own_db: OwnDatabase) -> None:
    """A rolling upgrade: an old relay holds the single outbox lock; no sharded claim publishes meanwhile."""
    await seed(own_db, keys=4, per_key=1)
    store = PgOutbox(own_db.relay_pool)
    async with own_db.su.transaction():
        assert await own_db.su.fetchval("SELECT pg_try_advisory_xact_lock($1::bigint)", 0x43414D51)
        async with store.claim(100) as claim:
            assert (list(claim.messages), claim.more) == ([], True)
    async with store.claim(100) as claim:
        assert len(claim.messages) == 4
