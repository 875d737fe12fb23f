"""A database of one test module's own, in place of the session's shared one.

The main pytest session keeps service processes on the shared database (the session-wide
`service`, `event_service`): each relays that database's outbox, consumes with its own group and
runs re-assessment jobs. A module whose tests must be the only workers on their data imports these
fixtures; they override, for that module only, `database` and what is made on it (`owner_conn`,
`superuser_conn`, `app_pool`, `relay_pool`, `tier_service`; `new_merchant`, `merchant_with_default`
and `start_service(database, ...)` follow):

    from tests.module_database import (  # noqa: F401  (fixtures: this module's own database)
        module_app_pool, module_database, module_owner_conn, module_relay_pool, module_superuser_conn,
        module_tier_service,
    )

A module that needs one database per parameter overrides `database` again itself (the others
depend on it by name, so they follow).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from campaign_service.adapters.postgres.pool import create_pool, init_connection
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.service.tiers import TierService
from tests.conftest import Database, make_database


@pytest.fixture(scope="module", name="database")
async def module_database() -> Database:
    return await make_database()


@pytest.fixture(scope="module", name="owner_conn")
async def module_owner_conn(database: Database) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(database.owner_dsn)
    yield conn
    await conn.close()


@pytest.fixture(scope="module", name="superuser_conn")
async def module_superuser_conn(database: Database) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await asyncpg.connect(database.superuser_dsn, database=database.name)
    await init_connection(conn)
    yield conn
    await conn.close()


@pytest.fixture(scope="module", name="app_pool")
async def module_app_pool(database: Database) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    pool = await create_pool(database.app_dsn, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="module", name="relay_pool")
async def module_relay_pool(database: Database) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    pool = await create_pool(database.relay_dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture(scope="module", name="tier_service")
def module_tier_service(app_pool: asyncpg.Pool[asyncpg.Record]) -> TierService:
    return TierService(PgUnitOfWork(app_pool))
