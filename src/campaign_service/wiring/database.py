"""PostgreSQL: the configured server or the embedded one, migrations, pools, the check that the
service role is subject to Row-Level Security, readiness, and the tier-count refresher."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeAlias

import asyncpg

from campaign_service import metrics
from campaign_service.adapters.postgres import migrations
from campaign_service.adapters.postgres.embedded import start_embedded
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tier_counts import refresh_tier_counts
from campaign_service.api.http import Check
from campaign_service.config import ConfigError, Settings
from campaign_service.wiring import lifetime

Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


@dataclass(frozen=True)
class DatabaseTarget:
    app_dsn: str
    owner_dsn: str
    relay_dsn: str  # the outbox relay and tier counts: a role the request path does not hold


@contextlib.asynccontextmanager
async def target(settings: Settings) -> AsyncIterator[DatabaseTarget]:
    """The configured PostgreSQL, or the embedded one: started (and provisioned) on entering,
    stopped on leaving."""
    if not settings.embedded_db:
        yield DatabaseTarget(settings.app_dsn(), settings.owner_dsn(), settings.relay_dsn())
        return
    db = await start_embedded(settings.data_dir)
    try:
        yield DatabaseTarget(db.app_dsn, db.owner_dsn, db.relay_dsn)
    finally:
        await lifetime.bounded("embedded postgresql", db.stop)


async def migrate(owner_dsn: str) -> list[str]:
    """Applies the pending migrations as the schema owner; their names."""
    conn = await asyncpg.connect(owner_dsn)
    try:
        return await migrations.migrate(conn)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def pool(
    dsn: str, settings: Settings, *, min_size: int | None = None, max_size: int | None = None
) -> AsyncIterator[Pool]:
    """A pool (sized by CAMPAIGN_DB_POOL_MIN/MAX unless given) open while the block runs."""
    opened = await create_pool(
        dsn,
        min_size=settings.db_pool_min if min_size is None else min_size,
        max_size=settings.db_pool_max if max_size is None else max_size,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        connect_timeout_s=settings.db_connect_timeout_s,
    )
    try:
        yield opened
    finally:
        try:
            await asyncio.wait_for(opened.close(), lifetime.STEP_TIMEOUT_S)
        except TimeoutError:  # connections stuck in a query: cut them
            opened.terminate()


class UnsafeDatabaseRole(Exception):
    pass


async def check_app_role(app_pool: Pool) -> None:
    """Refuses to serve as a role for which Row-Level Security would not apply, or that may
    assume another role (the relay's sees every merchant's outbox)."""
    row = await app_pool.fetchrow(
        "SELECT r.rolsuper, r.rolbypassrls, EXISTS (SELECT 1 FROM pg_tables t"
        " WHERE t.tablename = 'vip_tiers' AND t.tableowner = current_user) AS owner,"
        " (SELECT string_agg(g.rolname, ', ') FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
        "  WHERE m.member = r.oid) AS member_of"
        " FROM pg_roles r WHERE r.rolname = current_user"
    )
    assert row is not None
    if row["rolsuper"] or row["rolbypassrls"] or row["owner"]:
        raise UnsafeDatabaseRole(
            "CAMPAIGN_DB_USER: the service role must not be superuser, BYPASSRLS or the table owner"
        )
    if row["member_of"]:
        raise UnsafeDatabaseRole(
            f"CAMPAIGN_DB_USER: the service role must be a member of no other role; it is a member of"
            f" {row['member_of']} (REVOKE {row['member_of']} FROM <service role>, as a superuser)"
        )


@contextlib.asynccontextmanager
async def relay_pool(settings: Settings, dsn: str) -> AsyncIterator[Pool]:
    """The relay's own small pool (outbox relay, outbox list, tier counts), logged in as its own role."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            # a connection per claim in flight, one for stats and purges, one for tier counts
            size = settings.outbox_concurrency + 2
            opened = await stack.enter_async_context(pool(dsn, settings, min_size=1, max_size=size))
        except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
            raise ConfigError(
                f"CAMPAIGN_RELAY_DB_USER: cannot log in as the relay's role ({type(exc).__name__}); provision"
                " it (deploy/postgres/init-campaign.sh) and set CAMPAIGN_RELAY_DB_PASSWORD or CAMPAIGN_RELAY_DB_DSN"
            ) from None
        yield opened


def readiness(app_pool: Pool) -> Check:
    """Critical: reachable, and no migration pending."""

    async def ready() -> str | None:
        async with app_pool.acquire(timeout=2) as conn:
            missing = await migrations.pending(conn)
        metrics.DB_UP.set(1)
        return f"migrations pending: {', '.join(missing)}" if missing else None

    async def check() -> str | None:
        try:
            return await ready()
        except (TimeoutError, asyncpg.PostgresError, OSError) as exc:
            metrics.DB_UP.set(0)
            return f"unreachable ({type(exc).__name__})"

    return Check("postgres", check)


def tier_counts(relay_pool: Pool, settings: Settings) -> contextlib.AbstractAsyncContextManager[object]:
    """The tier-count gauges, refreshed in the background while the block runs, on the relay's
    pool: the service role may not see every merchant's id."""
    refresh = refresh_tier_counts(relay_pool, settings.tier_counts_top_n, settings.tier_counts_interval_s)
    return lifetime.background("tier-counts", refresh)
