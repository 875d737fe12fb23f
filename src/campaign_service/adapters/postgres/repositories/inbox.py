"""Consumed events already applied: processed_events, the authoritative dedupe."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from campaign_service.adapters.postgres.repositories.rows import Connection
from campaign_service.domain.errors import NotFound


class PgInboxRepository:
    def __init__(self, conn: Connection, merchant_id: UUID) -> None:
        self._conn = conn
        self._merchant = merchant_id

    async def mark_processed(self, event_ids: Sequence[UUID], event_type: str) -> set[UUID]:
        """Records the events as processed; the ids seen for the first time (the rest are duplicates).
        Raises NotFound when the merchant is not provisioned (the foreign key says so)."""
        if not event_ids:
            return set()
        try:
            rows = await self._conn.fetch(
                "INSERT INTO processed_events (event_id, merchant_id, event_type)"
                " SELECT e, $2, $3 FROM unnest($1::uuid[]) AS e ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                list(event_ids),
                self._merchant,
                event_type,
            )
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("merchant is not provisioned") from None
        return {r["event_id"] for r in rows}
