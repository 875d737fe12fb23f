"""Advancing the read cache's durable epoch inside a merchant's transaction (migration 0008;
adapters/redis/cache.py says why)."""

from __future__ import annotations

from campaign_service.adapters.postgres.repositories.rows import Connection


class PgCacheEpochBump:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def advance(self) -> None:
        """The epoch moves on when this transaction commits (and holds its row lock until then)."""
        await self._conn.execute("UPDATE cache_epoch SET epoch = epoch + 1")
