"""The tier reference check of customer_tiers by key (migration 0024): a statement of several
merchants' rows is refused when any one pair (merchant, tier) has no tier, whichever its place in
key order, and the tiers a writer references are locked FOR KEY SHARE until it commits, so a
concurrent delete of such a tier waits (as the foreign key's RI check made it)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import pytest

INSERT = (
    "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, assigned_at, source, held_tiers)"
    " SELECT m, gen_random_uuid(), t, now(), 'manual', ARRAY[t] FROM unnest($1::uuid[], $2::text[]) AS x(m, t)"
)


async def _scope(conn: Any, merchants: list[uuid.UUID]) -> None:
    scope = json.dumps(dict.fromkeys(map(str, merchants), True))
    await conn.execute("SELECT set_config('app.merchant_ids', $1, true)", scope)


async def _customers(superuser_conn: Any, merchants: list[uuid.UUID]) -> int:
    return int(
        await superuser_conn.fetchval("SELECT count(*) FROM customer_tiers WHERE merchant_id = ANY($1)", merchants)
    )


async def test_one_unknown_tier_among_many_refuses_the_whole_statement(
    app_pool: Any, superuser_conn: Any, ladder_merchant: Any
) -> None:
    merchants = sorted([await ladder_merchant() for _ in range(3)], key=lambda m: m.int)
    # The unknown pair is the last in key order: every pair before it is found (and locked) first.
    for tiers in (["gold", "silver", "platinum"], ["platinum", "basic", "gold"]):
        async with app_pool.acquire() as conn:
            with pytest.raises(asyncpg.ForeignKeyViolationError, match="customer_tiers_merchant_id_tier_id_fkey"):
                async with conn.transaction():
                    await _scope(conn, merchants)
                    await conn.execute(INSERT, merchants, tiers)
    assert await _customers(superuser_conn, merchants) == 0
    async with app_pool.acquire() as conn, conn.transaction():
        await _scope(conn, merchants)
        await conn.execute(INSERT, merchants * 2, ["gold", "silver", "basic", "basic", "gold", "silver"])
    assert await _customers(superuser_conn, merchants) == 6


async def test_a_referenced_tier_cannot_be_deleted_until_the_writer_commits(
    app_pool: Any, superuser_conn: Any, ladder_merchant: Any
) -> None:
    merchant = await ladder_merchant()
    async with app_pool.acquire() as writer, writer.transaction():
        await _scope(writer, [merchant])
        await writer.execute(INSERT, [merchant], ["silver"])
        # The writer holds silver FOR KEY SHARE: a delete of it waits (lock_timeout).
        with pytest.raises(asyncpg.LockNotAvailableError):
            async with superuser_conn.transaction():
                await superuser_conn.execute("SET LOCAL lock_timeout = '200ms'")
                await superuser_conn.execute(
                    "DELETE FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 'silver'", merchant
                )
    # Committed: silver is held now, so its delete is refused as the foreign key did.
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with superuser_conn.transaction():
            await superuser_conn.execute(
                "DELETE FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 'silver'", merchant
            )
