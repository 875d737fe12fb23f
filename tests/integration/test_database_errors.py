"""Database failures as the caller sees them, against the real PostgreSQL: a session the server
ends whatever the SQLSTATE class of its message, and a statement timeout, are Unavailable
(retryable); an error of ours stays what it is."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.domain.errors import NotFound
from campaign_service.service.errors import Unavailable
from tests.conftest import OwnDatabase


async def test_session_ended_by_idle_in_transaction_timeout_is_unavailable(own_db: OwnDatabase) -> None:
    """PostgreSQL ends a session idle in a transaction too long with FATAL 25P03 - SQLSTATE class
    25, "invalid transaction state", not a connection class - and the connection is gone: the
    caller may retry. (Once this escaped as IdleInTransactionSessionTimeoutError: INTERNAL.)"""
    merchant = await own_db.merchant()
    # The pool sets idle_in_transaction_session_timeout to twice the statement timeout: 100 ms.
    pool = await create_pool(own_db.db.app_dsn, min_size=1, max_size=2, statement_timeout_ms=50)
    try:
        uow = PgUnitOfWork(pool)
        with pytest.raises(Unavailable) as err:
            async with uow(merchant, readonly=True) as work:
                await asyncio.sleep(0.5)  # the server ends the session meanwhile
                await work.tiers.get("gold")
        assert "database unavailable" in err.value.message
        async with uow(merchant, readonly=True) as work:  # the pool replaces the connection
            assert await work.tiers.get("gold") is None
    finally:
        await pool.close()


async def test_statement_timeout_is_unavailable(own_db: OwnDatabase) -> None:
    merchant = await own_db.merchant()
    pool = await create_pool(own_db.db.app_dsn, min_size=1, max_size=2, statement_timeout_ms=50)
    blocker = await asyncpg.connect(own_db.db.superuser_dsn, database=own_db.db.name)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE vip_tiers IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(Unavailable):
                async with PgUnitOfWork(pool)(merchant, readonly=True) as work:
                    await work.tiers.get("gold")
    finally:
        await blocker.close()
        await pool.close()


async def test_insufficient_resources_class_53_is_unavailable(own_db: OwnDatabase) -> None:
    """A statement that runs out of a server resource (here 53400 configuration_limit_exceeded:
    temp_file_limit) is SQLSTATE class 53; once only 53300 too_many_connections was mapped and
    the rest escaped as INTERNAL."""
    merchant = await own_db.merchant()
    await own_db.su.execute(f'ALTER DATABASE "{own_db.db.name}" SET temp_file_limit = 64')  # kB
    pool = await create_pool(own_db.db.app_dsn, min_size=1, max_size=2)
    try:
        with pytest.raises(Unavailable) as err:
            # The unit of work's own transaction, to run a statement of the test's on its connection.
            async with PgUnitOfWork(pool)._transaction(merchant, readonly=True) as repositories:
                conn = repositories.tiers._conn
                await conn.execute("SET LOCAL work_mem = '64kB'")
                await conn.execute(
                    "SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC) s"
                )
        assert isinstance(err.value.__cause__, asyncpg.exceptions.ConfigurationLimitExceededError)
    finally:
        await pool.close()


async def test_domain_errors_and_our_bugs_pass_unchanged(own_db: OwnDatabase) -> None:
    merchant = await own_db.merchant()
    uow = PgUnitOfWork(own_db.pool)
    with pytest.raises(NotFound):
        async with uow(merchant):
            raise NotFound("no such tier")
    with pytest.raises(asyncpg.UndefinedTableError):  # SQLSTATE 42P01: a fault of ours, not an outage
        async with uow._transaction(merchant, readonly=False) as repositories:
            await repositories.tiers._conn.execute("SELECT * FROM no_such_table")
