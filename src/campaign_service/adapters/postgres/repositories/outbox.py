"""Writing a merchant's outbox rows (adapters/postgres/outbox.py is the relay's side)."""

from __future__ import annotations

from collections.abc import Sequence

from campaign_service.adapters.postgres.repositories.rows import Connection, columns
from campaign_service.domain.events import OutboxMessage


class PgOutbox:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def add(self, messages: Sequence[OutboxMessage]) -> None:
        """Writes the messages in one statement; the relay publishes them in this order (seq)."""
        if not messages:
            return
        await self._conn.execute(
            "INSERT INTO outbox_events (event_id, merchant_id, topic, key, payload, headers, traceparent)"
            " SELECT e, m, t, k, p, h, tp FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[],"
            " $6::jsonb[], $7::text[]) WITH ORDINALITY AS x(e, m, t, k, p, h, tp, n) ORDER BY n",
            *columns(messages, "event_id", "merchant_id", "topic", "key", "payload", "headers", "traceparent"),
        )
