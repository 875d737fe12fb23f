"""Row-Level Security as the last line: raw SQL as the service role, bypassing the service
layer, with merchant A set cannot see, change, delete or create merchant B's rows in any tenant
table, and sees nothing at all with no merchant set."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.integration.test_schema import TENANT_TABLES

# A row for merchant $1 per table, as the service role would write it for that merchant.
INSERT_FOR: dict[str, Callable[[asyncpg.Connection[Any], uuid.UUID], Awaitable[Any]]] = {
    "vip_tiers": lambda c, m: c.execute(
        "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points) VALUES ($1, 'evil', 'Evil', 1)", m
    ),
    "vip_tier_translations": lambda c, m: c.execute(
        "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name) VALUES ($1, 'gold', 'he', 'זהב')", m
    ),
    "customer_tiers": lambda c, m: c.execute(
        "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, source) VALUES ($1, $2, 'gold', 'manual')",
        m,
        uuid.uuid4(),
    ),
    "customer_tier_history": lambda c, m: c.execute(
        "INSERT INTO customer_tier_history (merchant_id, customer_id, tier_id, assigned_at, source)"
        " VALUES ($1, $2, 'gold', now(), 'manual')",
        m,
        uuid.uuid4(),
    ),
    "processed_events": lambda c, m: c.execute(
        "INSERT INTO processed_events (event_id, merchant_id, event_type) VALUES ($1, $2, 'customer.created')",
        uuid.uuid4(),
        m,
    ),
    "outbox_events": lambda c, m: c.execute(
        # Already published: a relay running elsewhere in the test session never claims it, so the
        # row stays as written (a pending one had its attempts and last_error changed under the test).
        "INSERT INTO outbox_events (event_id, merchant_id, topic, key, payload, published_at)"
        " VALUES ($1, $2, 'vip_tier.updated', 'k', '{}', now())",
        uuid.uuid4(),
        m,
    ),
    "tier_programs": lambda c, m: c.execute(
        "INSERT INTO tier_programs (merchant_id, window_kind) VALUES ($1, 'calendar_year')", m
    ),
    "qualifying_points_daily": lambda c, m: c.execute(
        "INSERT INTO qualifying_points_daily (merchant_id, customer_id, day, points) VALUES ($1, $2, '2026-01-01', 5)",
        m,
        uuid.uuid4(),
    ),
    "tier_manual_assignments": lambda c, m: c.execute(
        "INSERT INTO tier_manual_assignments (merchant_id, customer_id, tier_id, moved, reason, actor)"
        " VALUES ($1, $2, 'gold', true, 'goodwill', 'ops')",
        m,
        uuid.uuid4(),
    ),
    "tier_downgrade_warnings": lambda c, m: c.execute(
        "INSERT INTO tier_downgrade_warnings (merchant_id, customer_id, deadline) VALUES ($1, $2, now())",
        m,
        uuid.uuid4(),
    ),
    "tier_change_jobs": lambda c, m: c.execute(
        # Not yet due (a runner elsewhere in the test session never starts it).
        "INSERT INTO tier_change_jobs (merchant_id, change_id, not_before) VALUES ($1, $2, now() + interval '1 day')",
        m,
        uuid.uuid4(),
    ),
    "tier_scheduled_changes": lambda c, m: c.execute(
        # Far in the future: an activator elsewhere in the test session never applies it.
        "INSERT INTO tier_scheduled_changes (merchant_id, change_id, target, kind, payload, effective_at)"
        " VALUES ($1, $2, 'gold', 'tier_delete', '{}', now() + interval '1 year')",
        m,
        uuid.uuid4(),
    ),
    # Written by the vip_tiers triggers in populate(); directly only by the tests of refused writes.
    "tier_config_heads": lambda c, m: c.execute(
        "INSERT INTO tier_config_heads (merchant_id, version, txid) VALUES ($1, 1, 0)", m
    ),
    # Written at commit by the trigger on tier_config_heads (0032); directly only by the tests of refused writes.
    "tier_config_versions": lambda c, m: c.execute(
        "INSERT INTO tier_config_versions (merchant_id, version, valid_from, tiers) VALUES ($1, 99, now(), '[]')", m
    ),
    # populate's first tier write created the merchant's row (the default set): a second is a change.
    "merchant_locales": lambda c, m: c.execute(
        "INSERT INTO merchant_locales (merchant_id, locales) VALUES ($1, '{en,ar,he,fr}')"
        " ON CONFLICT (merchant_id) DO UPDATE SET locales = EXCLUDED.locales",
        m,
    ),
}


async def as_merchant(conn: asyncpg.Connection[Any], merchant: uuid.UUID | None) -> None:
    if merchant is not None:
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))


async def populate(app_pool: Any, merchant: uuid.UUID) -> None:
    """One row in every tenant table for `merchant`, written through RLS like the service does."""
    async with app_pool.acquire() as conn, conn.transaction():
        await as_merchant(conn, merchant)
        await conn.execute(
            "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points) VALUES ($1, 'gold', 'Gold', 100)", merchant
        )
        await conn.execute(
            "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name) VALUES ($1, 'gold', 'ar', 'ذهبي')",
            merchant,
        )
        await INSERT_FOR["customer_tiers"](conn, merchant)  # its history row comes from the trigger
        await INSERT_FOR["processed_events"](conn, merchant)
        await INSERT_FOR["outbox_events"](conn, merchant)
        await INSERT_FOR["tier_programs"](conn, merchant)
        await INSERT_FOR["qualifying_points_daily"](conn, merchant)
        await INSERT_FOR["tier_manual_assignments"](conn, merchant)
        await INSERT_FOR["tier_downgrade_warnings"](conn, merchant)
        await INSERT_FOR["tier_change_jobs"](conn, merchant)
        await INSERT_FOR["tier_scheduled_changes"](conn, merchant)  # tier_config_heads: from the vip_tiers trigger


async def snapshot(superuser_conn: Any, merchant: uuid.UUID) -> dict[str, list[str]]:
    return {
        t: [
            r["row"]
            for r in await superuser_conn.fetch(
                f"SELECT t::text AS row FROM {t} t WHERE merchant_id = $1 ORDER BY 1", merchant
            )
        ]
        for t in TENANT_TABLES
    }


@pytest.fixture
async def two_merchants(new_merchant: Any, app_pool: Any, superuser_conn: Any) -> tuple[uuid.UUID, uuid.UUID, Any]:
    a, b = await new_merchant(), await new_merchant()
    await populate(app_pool, a)
    await populate(app_pool, b)
    before = await snapshot(superuser_conn, b)
    assert all(len(rows) == 1 for rows in before.values())  # B really has a row everywhere
    return a, b, before


async def test_every_merchant_table_is_a_tenant_table_with_forced_rls(owner_conn: Any) -> None:
    rows = await owner_conn.fetch(
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'merchant_id' AND NOT a.attisdropped"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
    )
    assert sorted(r["relname"] for r in rows) == sorted(TENANT_TABLES)
    assert all(r["relrowsecurity"] and r["relforcerowsecurity"] for r in rows)


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_merchant_a_cannot_see_change_delete_or_create_b_rows(
    app_pool: Any, superuser_conn: Any, two_merchants: Any, table: str
) -> None:
    a, b, before = two_merchants
    async with app_pool.acquire() as conn:
        async with conn.transaction():
            await as_merchant(conn, a)
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE merchant_id = $1", b) == 0
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE merchant_id <> $1", a) == 0
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 1  # its own row only
        for statement in (
            f"UPDATE {table} SET merchant_id = merchant_id WHERE merchant_id = $1",
            f"DELETE FROM {table} WHERE merchant_id = $1",
        ):
            async with conn.transaction():
                await as_merchant(conn, a)
                try:
                    result = await conn.execute(statement, b)
                except asyncpg.InsufficientPrivilegeError:
                    continue  # the role may not do this at all (append-only tables)
                assert result.endswith(" 0"), statement
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await as_merchant(conn, a)
                await INSERT_FOR[table](conn, b)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # nor move its own row over to B
            async with conn.transaction():
                await as_merchant(conn, a)
                await conn.execute(f"UPDATE {table} SET merchant_id = $1 WHERE merchant_id = $2", b, a)
    assert await snapshot(superuser_conn, b) == before


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_no_merchant_set_sees_and_writes_nothing(app_pool: Any, two_merchants: Any, table: str) -> None:
    a, _, _ = two_merchants
    async with app_pool.acquire() as conn:
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.merchant_id', '', true)")
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await INSERT_FOR[table](conn, a)


async def test_a_malformed_merchant_setting_is_an_error_not_a_wildcard(app_pool: Any, two_merchants: Any) -> None:
    async with app_pool.acquire() as conn:
        for value in ("*", "' OR true --", "00000000-0000-0000-0000-00000000000g"):
            with pytest.raises(asyncpg.InvalidTextRepresentationError):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('app.merchant_id', $1, true)", value)
                    await conn.fetchval("SELECT count(*) FROM vip_tiers")


async def test_the_merchant_setting_does_not_outlive_its_transaction(app_pool: Any, two_merchants: Any) -> None:
    a, _, _ = two_merchants
    async with app_pool.acquire() as conn:
        async with conn.transaction():
            await as_merchant(conn, a)
            assert await conn.fetchval("SELECT count(*) FROM vip_tiers") == 1
        assert await conn.fetchval("SELECT count(*) FROM vip_tiers") == 0


@pytest.mark.parametrize(
    "table", [t for t in TENANT_TABLES if t not in ("outbox_events", "processed_events")] + ["merchants"]
)
async def test_the_relay_role_reaches_only_the_outbox(relay_pool: Any, two_merchants: Any, table: str) -> None:
    """The relay's own login (campaign_relay) sees every merchant's outbox, and no other table (but
    processed_events, which it purges after the retention: see the next test)."""
    async with relay_pool.acquire() as conn, conn.transaction():
        assert await conn.fetchval("SELECT count(DISTINCT merchant_id) FROM outbox_events") >= 2
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval(f"SELECT count(*) FROM {table}")


async def test_the_relay_role_may_only_read_and_delete_processed_events(relay_pool: Any, two_merchants: Any) -> None:
    """0011: the retention purge reads and deletes the dedupe record; nothing else."""
    a, _, _ = two_merchants
    async with relay_pool.acquire() as conn, conn.transaction():
        await conn.fetchval("SELECT count(*) FROM processed_events")
        for statement in (
            "INSERT INTO processed_events (event_id, merchant_id, event_type) VALUES (gen_random_uuid(), $1, 'x')",
            "UPDATE processed_events SET event_type = 'x' WHERE merchant_id = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():  # a savepoint, rolled back
                    await conn.execute(statement, a)


# Every role the session's login role is, or may become (SET ROLE) or inherits, transitively.
ASSUMABLE_ROLES = """
WITH RECURSIVE assumable(oid) AS (
    SELECT oid FROM pg_roles WHERE rolname = session_user
    UNION
    SELECT m.roleid FROM pg_auth_members m JOIN assumable a ON m.member = a.oid
)
SELECT r.rolname FROM assumable a JOIN pg_roles r ON r.oid = a.oid ORDER BY 1
"""


async def test_the_service_role_can_assume_no_role_that_sees_another_merchant(
    app_pool: Any, two_merchants: Any
) -> None:
    """Issue 12.4, as raw SQL on the service role's login: it is a member of no role (pg_auth_members,
    transitively), SET ROLE to any other role is refused, and as each role it can assume, with
    merchant A set, it reads no row of B in any tenant table (the outbox included)."""
    a, b, _ = two_merchants
    async with app_pool.acquire() as conn:
        assumable = [r["rolname"] for r in await conn.fetch(ASSUMABLE_ROLES)]
        assert assumable == ["campaign_app"]
        others = [
            r["rolname"]
            for r in await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE rolname <> session_user AND rolname !~ '^pg_'"
            )
        ]
        assert "campaign_relay" in others
        for role in others:
            async with conn.transaction():
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(f'SET LOCAL ROLE "{role}"')
        for role in assumable:
            for table in TENANT_TABLES:
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL ROLE "{role}"')
                    await as_merchant(conn, a)
                    seen = await conn.fetch(f"SELECT DISTINCT merchant_id FROM {table}")
                    assert {r["merchant_id"] for r in seen} <= {a}, (role, table)
                    assert b not in {r["merchant_id"] for r in seen}


async def test_a_leftover_membership_of_the_relay_role_opens_nothing(
    app_pool: Any, superuser_conn: Any, two_merchants: Any
) -> None:
    """Should an old installation still grant campaign_relay to campaign_app (before 0009), the
    relay's policy and the tier counts hold only in the relay's own sessions (session_user)."""
    await superuser_conn.execute("GRANT campaign_relay TO campaign_app")
    try:
        async with app_pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL ROLE campaign_relay")
            assert await conn.fetchval("SELECT count(*) FROM outbox_events") == 0
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("SELECT * FROM campaign_tier_counts(10)")
    finally:
        await superuser_conn.execute("REVOKE campaign_relay FROM campaign_app")


async def test_the_service_role_cannot_count_every_merchants_tiers(
    app_pool: Any, relay_pool: Any, two_merchants: Any
) -> None:
    """Issue 12.5: campaign_tier_counts() names every merchant; only the relay's role may run it
    (the vip_tiers_total metric is computed on the relay's pool)."""
    a, b, _ = two_merchants
    async with app_pool.acquire() as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM campaign_tier_counts(1000)")
    counted = {r["merchant_id"] for r in await relay_pool.fetch("SELECT * FROM campaign_tier_counts(1000)")}
    assert {a, b} <= counted


async def test_other_policies_settings_do_not_open_tenant_rows_to_the_service_role(
    app_pool: Any, two_merchants: Any
) -> None:
    """`campaign.tier_counts` opens vip_tiers to the owner's counting function only (0006)."""
    a, _, _ = two_merchants
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('campaign.tier_counts', 'on', true)")
        assert await conn.fetchval("SELECT count(*) FROM vip_tiers") == 0
        await as_merchant(conn, a)
        assert await conn.fetchval("SELECT count(*) FROM vip_tiers") == 1


async def as_merchants(conn: asyncpg.Connection[Any], merchants: list[uuid.UUID]) -> None:
    """The scope of a consumer batch or scheduler chunk: a set of merchants (migration 0020)."""
    await conn.execute(
        "SELECT set_config('app.merchant_ids', $1, true)", json.dumps(dict.fromkeys(map(str, merchants), True))
    )


@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_a_transaction_scoped_to_a_set_of_merchants_sees_and_writes_only_that_set(
    app_pool: Any, superuser_conn: Any, two_merchants: Any, new_merchant: Any, table: str
) -> None:
    a, b, before = two_merchants
    c = await new_merchant()  # in the set, without rows: the set {A, C} must not reach B either
    async with app_pool.acquire() as conn:
        for scope in ([a], [a, c]):
            async with conn.transaction():
                await as_merchants(conn, scope)
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 1  # A's row only
                assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE merchant_id = $1", b) == 0
                for statement in (
                    f"UPDATE {table} SET merchant_id = merchant_id WHERE merchant_id = $1",
                    f"DELETE FROM {table} WHERE merchant_id = $1",
                ):
                    try:
                        async with conn.transaction():
                            assert (await conn.execute(statement, b)).endswith(" 0"), statement
                    except asyncpg.InsufficientPrivilegeError:
                        pass  # the role may not do this at all (append-only tables)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await as_merchants(conn, scope)
                    await INSERT_FOR[table](conn, b)
        async with conn.transaction():  # the set {A, B} sees both: the scope really is the set
            await as_merchants(conn, [a, b])
            assert await conn.fetchval(f"SELECT count(DISTINCT merchant_id) FROM {table}") == 2
        # the set does not outlive its transaction
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
    assert await snapshot(superuser_conn, b) == before


async def test_a_malformed_merchant_set_is_an_error_or_nothing_never_a_wildcard(
    app_pool: Any, two_merchants: Any
) -> None:
    async with app_pool.acquire() as conn:
        for value in ("*", "{*}", "' OR true --"):
            with pytest.raises((asyncpg.InvalidTextRepresentationError, asyncpg.DataError)):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('app.merchant_ids', $1, true)", value)
                    await conn.fetchval("SELECT count(*) FROM vip_tiers")
        for value in ('{"*": true}', '{"00000000-0000-0000-0000-00000000000g": true}', '"%"', "true", "{}", "[]"):
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.merchant_ids', $1, true)", value)
                assert await conn.fetchval("SELECT count(*) FROM vip_tiers") == 0, value


async def test_the_due_merchants_setting_does_not_open_customer_rows_to_the_service_role(
    app_pool: Any, two_merchants: Any
) -> None:
    """`campaign.due_merchants` opens customer_tiers to the owner's function only (0020), and that
    function returns merchant ids and counts, nothing of the customers."""
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('campaign.due_merchants', 'on', true)")
        assert await conn.fetchval("SELECT count(*) FROM customer_tiers") == 0
        cols = await conn.fetch("SELECT * FROM campaign_due_merchants(now(), 10)")
        assert all(set(r.keys()) == {"merchant_id", "due"} for r in cols)
