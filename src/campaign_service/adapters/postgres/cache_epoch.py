"""The read cache's durable epoch in PostgreSQL (migration 0008), as the Redis cache confirms it."""

from __future__ import annotations

import asyncpg


class PgCacheEpoch:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], timeout_s: float = 2.0) -> None:
        self._pool = pool
        self._timeout_s = timeout_s

    async def current(self) -> int:
        """The committed epoch; waits for a transaction that is advancing it to end."""
        # FOR SHARE waits for a writer that has bumped but not yet committed, so a confirmation
        # never settles on an epoch that such a write is about to leave behind.
        value = await self._pool.fetchval("SELECT epoch FROM cache_epoch FOR SHARE", timeout=self._timeout_s)
        return int(value)

    async def advance(self, past: int) -> int:
        """Moves the epoch beyond both its value and `past`; the new epoch."""
        value = await self._pool.fetchval(
            "UPDATE cache_epoch SET epoch = greatest(epoch, $1) + 1 RETURNING epoch", past, timeout=self._timeout_s
        )
        return int(value)
