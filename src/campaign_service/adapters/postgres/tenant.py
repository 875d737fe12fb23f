"""The merchant-scoped unit of work on PostgreSQL: every transaction sets `app.merchant_id`
locally, so Row-Level Security confines each statement to that merchant's rows. The repositories
it hands out are in repositories/, one module each; asyncpg errors are mapped in errors.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from campaign_service.adapters.postgres.errors import translated
from campaign_service.adapters.postgres.repositories.cache_epoch import PgCacheEpochBump
from campaign_service.adapters.postgres.repositories.customers import PgCustomerTierRepository
from campaign_service.adapters.postgres.repositories.inbox import PgInboxRepository
from campaign_service.adapters.postgres.repositories.locales import PgLocaleRepository
from campaign_service.adapters.postgres.repositories.outbox import PgOutbox
from campaign_service.adapters.postgres.repositories.rows import Connection
from campaign_service.adapters.postgres.repositories.tier_change_jobs import PgTierChangeJobs
from campaign_service.adapters.postgres.repositories.tiers import PgTierRepository
from campaign_service.service.unit_of_work import AbstractUnitOfWork


@dataclass(frozen=True)
class PgRepositories:
    """The repositories of one transaction (service.ports.Repositories)."""

    tiers: PgTierRepository
    customers: PgCustomerTierRepository
    inbox: PgInboxRepository
    outbox: PgOutbox
    cache_epoch: PgCacheEpochBump
    tier_change_jobs: PgTierChangeJobs
    locales: PgLocaleRepository

    @classmethod
    def on(cls, conn: Connection, merchant_id: UUID) -> PgRepositories:
        return cls(
            tiers=PgTierRepository(conn, merchant_id),
            customers=PgCustomerTierRepository(conn, merchant_id),
            inbox=PgInboxRepository(conn, merchant_id),
            outbox=PgOutbox(conn),
            cache_epoch=PgCacheEpochBump(conn),
            tier_change_jobs=PgTierChangeJobs(conn, merchant_id),
            locales=PgLocaleRepository(conn, merchant_id),
        )


class PgUnitOfWork(AbstractUnitOfWork):
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], acquire_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s

    @asynccontextmanager
    async def _transaction(self, merchant_id: UUID, *, readonly: bool) -> AsyncIterator[PgRepositories]:
        async with (
            translated(),  # acquiring (pool exhausted, server down)
            self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
            translated(conn),  # the transaction, while we hold the connection to ask about it
            conn.transaction(readonly=readonly),
        ):
            await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant_id))
            yield PgRepositories.on(conn, merchant_id)
