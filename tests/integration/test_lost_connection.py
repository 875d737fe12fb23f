"""A database connection lost in the middle of a transaction (PostgreSQL killed or restarted, the
backend terminated) is Unavailable - retryable - for the caller, never an internal error."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.service.errors import Unavailable
from tests.conftest import OwnDatabase


async def test_connection_lost_during_a_statement_is_unavailable(own_db: OwnDatabase) -> None:
    merchant = await own_db.merchant()
    uow = PgUnitOfWork(own_db.pool)

    async def lookup() -> object:
        async with uow(merchant, readonly=True) as work:
            return await work.tiers.get("gold")

    # The lookup waits on a lock, so its statement is surely running when its backend goes.
    blocker = await asyncpg.connect(own_db.db.superuser_dsn, database=own_db.db.name)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE vip_tiers IN ACCESS EXCLUSIVE MODE")
            running = asyncio.create_task(lookup())
            for _ in range(100):
                waiting = await own_db.su.fetchval(
                    "SELECT pid FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                    " WHERE a.datname = $1 AND a.usename = 'campaign_app' AND NOT l.granted",
                    own_db.db.name,
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, "the lookup never waited on the lock"
            await own_db.su.execute("SELECT pg_terminate_backend($1)", waiting)
            with pytest.raises(Unavailable):
                await running
    finally:
        await blocker.close()
    async with uow(merchant, readonly=True) as work:  # the pool replaces the lost connection
        assert await work.tiers.get("gold") is None


async def test_connection_terminated_between_statements_is_unavailable(own_db: OwnDatabase) -> None:
    """The backend ends while the connection idles inside the transaction. Depending on where the
    next statement meets the dying connection, asyncpg raises ConnectionDoesNotExistError, an
    InternalClientError ("another operation (2) is in progress": it is still consuming the
    server's FATAL message) or an InterfaceError from the transaction's exit: each must be
    Unavailable, so the race is run a number of times."""
    merchant = await own_db.merchant()
    uow = PgUnitOfWork(own_db.pool)
    for _ in range(30):
        with pytest.raises(Unavailable):
            async with uow(merchant, readonly=True) as work:
                await own_db.su.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND usename = 'campaign_app' AND state = 'idle in transaction'",
                    own_db.db.name,
                )
                await work.tiers.get("gold")
