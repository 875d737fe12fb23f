"""The schema on the real PostgreSQL: RLS with the service's own role, partitions, triggers,
migrations."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import asyncpg
import pytest

from campaign_service.adapters.postgres import migrations
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.wiring.database import UnsafeDatabaseRole, check_app_role

TENANT_TABLES = [
    "vip_tiers",
    "vip_tier_translations",
    "customer_tiers",
    "customer_tier_history",
    "processed_events",
    "outbox_events",
    "tier_programs",
    "qualifying_points_daily",
    "tier_manual_assignments",
    "tier_downgrade_warnings",
    "tier_change_jobs",
    "tier_scheduled_changes",
    "tier_config_heads",
    "merchant_locales",
    "tier_config_versions",
]


async def seed_tier(
    owner_conn: asyncpg.Connection[Any], app_pool: Any, merchant: uuid.UUID, tier_id: str = "gold"
) -> None:
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await conn.execute(
            "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points) VALUES ($1, $2, 'Gold', 100)",
            merchant,
            tier_id,
        )


async def test_service_role_is_not_owner_superuser_or_bypassrls(app_pool: Any) -> None:
    row = await app_pool.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
    assert (row["rolsuper"], row["rolbypassrls"]) == (False, False)
    owners = await app_pool.fetch("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
    assert [r["tableowner"] for r in owners] == ["campaign_owner"]
    await check_app_role(app_pool)  # does not raise


async def test_rls_enabled_and_forced_on_every_tenant_table(owner_conn: asyncpg.Connection[Any]) -> None:
    rows = await owner_conn.fetch(
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY($1::text[])",
        TENANT_TABLES,
    )
    assert {r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"]) for r in rows} == {
        t: (True, True) for t in TENANT_TABLES
    }


async def test_owner_role_is_refused_as_service_role(database: Any) -> None:
    pool = await create_pool(database.owner_dsn, min_size=1, max_size=1)
    try:
        with pytest.raises(UnsafeDatabaseRole):
            await check_app_role(pool)
    finally:
        await pool.close()


async def test_no_merchant_set_means_no_rows(app_pool: Any, owner_conn: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    await seed_tier(owner_conn, app_pool, merchant)
    async with app_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM vip_tiers") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points) VALUES ($1, 'x', 'X', 1)", merchant
            )


async def test_merchant_a_cannot_read_update_or_delete_b_rows(
    app_pool: Any, owner_conn: Any, superuser_conn: Any, new_merchant: Any
) -> None:
    a, b = await new_merchant(), await new_merchant()
    await seed_tier(owner_conn, app_pool, b, "gold")
    b_id = await superuser_conn.fetchval("SELECT id FROM vip_tiers WHERE merchant_id = $1", b)
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(a))
        # even by primary key and explicit merchant id
        assert await conn.fetchval("SELECT count(*) FROM vip_tiers WHERE merchant_id = $1 AND id = $2", b, b_id) == 0
        assert await conn.execute("UPDATE vip_tiers SET name = 'Hacked' WHERE id = $1", b_id) == "UPDATE 0"
        assert await conn.execute("DELETE FROM vip_tiers WHERE merchant_id = $1", b) == "DELETE 0"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points) VALUES ($1, 'evil', 'Evil', 1)", b
            )
    assert await superuser_conn.fetchval("SELECT name FROM vip_tiers WHERE id = $1", b_id) == "Gold"


async def test_rows_land_in_the_hash_partition_of_their_merchant(
    app_pool: Any, owner_conn: Any, superuser_conn: Any, new_merchant: Any
) -> None:
    partitions = await owner_conn.fetchval("SELECT count(*) FROM pg_inherits WHERE inhparent = 'vip_tiers'::regclass")
    assert partitions == 16
    merchants = [await new_merchant() for _ in range(8)]
    for m in merchants:
        await seed_tier(owner_conn, app_pool, m)
    rows = await superuser_conn.fetch(
        "SELECT merchant_id, tableoid::regclass::text AS part,"
        " satisfies_hash_partition('vip_tiers'::regclass, 16, substring(tableoid::regclass::text from '\\d+$')::int,"
        " merchant_id) AS fits FROM vip_tiers WHERE merchant_id = ANY($1::uuid[])",
        merchants,
    )
    assert len(rows) == 8
    assert all(r["part"].startswith("vip_tiers_p") and r["fits"] for r in rows)
    assert len({r["part"] for r in rows}) > 1  # spread over several partitions
    plan = await superuser_conn.fetchval(
        "EXPLAIN (FORMAT JSON) SELECT * FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 'gold'", merchants[0]
    )
    text = plan if isinstance(plan, str) else json.dumps(plan)
    relations = set(re.findall(r'"Relation Name": "(vip_tiers_p\d+)"', text))
    assert len(relations) == 1  # pruned to the merchant's partition


BAD_BENEFITS = [
    {"bonus_points": -1},
    {"bonus_points": 1.5},
    {"bonus_points": "100"},
    {"extra": 1},
    {"custom_perks": {}},
    {"custom_perks": [{"code": "x"}]},
    {"custom_perks": [{"code": "BAD", "label": {"en": "x"}}]},
    {"custom_perks": [{"code": "x", "label": {"fr": "x"}}]},
    {"custom_perks": [{"code": "x", "label": {}}]},
    {"custom_perks": [{"code": "x", "label": {"en": "x"}}, {"code": "x", "label": {"en": "y"}}]},
    {"custom_perks": [{"code": f"p{i}", "label": {"en": "x"}} for i in range(51)]},
    {"custom_perks": [{"code": f"p{i}", "label": {"en": "x" * 200, "ar": "x" * 200}} for i in range(50)]},
    [],
    "text",
]


@pytest.mark.parametrize("benefits", BAD_BENEFITS)
async def test_trigger_refuses_bad_benefits_from_a_raw_insert(app_pool: Any, new_merchant: Any, benefits: Any) -> None:
    merchant = await new_merchant()
    async with app_pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
                await conn.execute(
                    "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points, benefits)"
                    " VALUES ($1, 'gold', 'Gold', 1, $2)",
                    merchant,
                    benefits,
                )


async def test_trigger_refuses_bad_benefits_on_update_and_accepts_good(
    app_pool: Any, owner_conn: Any, new_merchant: Any
) -> None:
    merchant = await new_merchant()
    await seed_tier(owner_conn, app_pool, merchant)
    good = {"bonus_points": 5, "custom_perks": [{"code": "gift", "label": {"en": "Gift", "he": "מתנה"}}]}
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await conn.execute("UPDATE vip_tiers SET benefits = $1 WHERE merchant_id = $2", good, merchant)
        with pytest.raises(asyncpg.CheckViolationError):
            async with conn.transaction():
                await conn.execute("UPDATE vip_tiers SET benefits = $1 WHERE merchant_id = $2", {"x": 1}, merchant)
        row = await conn.fetchrow(
            "SELECT benefits, version, updated_at > created_at AS touched FROM vip_tiers WHERE merchant_id = $1",
            merchant,
        )
    assert row["benefits"] == good
    assert row["version"] == 2  # trg_updated_at bumps the version on every change


async def test_at_most_one_default_tier(app_pool: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await conn.execute(
            "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points, is_default) VALUES ($1, 'a', 'A', 0, true)",
            merchant,
        )
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points, is_default) VALUES ($1, 'b', 'B', 1, true)",
                merchant,
            )


async def test_migrations_are_idempotent_and_refuse_edits(database: Any) -> None:
    conn = await asyncpg.connect(database.owner_dsn)
    try:
        assert await migrations.migrate(conn) == []
        assert await migrations.pending(conn) == []
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(migrations.MigrationError):
            await migrations.migrate(conn)
    finally:
        first = migrations.available()[0]
        await conn.execute("UPDATE schema_migrations SET checksum = $1 WHERE version = 1", first.checksum)
        await conn.close()


async def test_customer_tier_history_is_append_only_for_the_service(
    app_pool: Any, owner_conn: Any, new_merchant: Any
) -> None:
    merchant = await new_merchant()
    await seed_tier(owner_conn, app_pool, merchant)
    customer = uuid.uuid4()
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await conn.execute(
            "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, source) VALUES ($1, $2, 'gold', 'manual')",
            merchant,
            customer,
        )
        assert await conn.fetchval("SELECT count(*) FROM customer_tier_history WHERE customer_id = $1", customer) == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM customer_tier_history WHERE customer_id = $1", customer)
