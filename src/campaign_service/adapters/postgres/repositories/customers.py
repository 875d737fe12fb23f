"""The tier each customer of a merchant holds: customer_tiers."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from campaign_service.adapters.postgres.repositories.rows import Connection, columns
from campaign_service.service.ports import CustomerAssignment


class PgCustomerTierRepository:
    def __init__(self, conn: Connection, merchant_id: UUID) -> None:
        self._conn = conn
        self._merchant = merchant_id

    async def get(self, customer_id: UUID) -> CustomerAssignment | None:
        row = await self._conn.fetchrow(
            "SELECT merchant_id, customer_id, tier_id, assigned_at, source, cause_event_id"
            " FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2",
            self._merchant,
            customer_id,
        )
        return CustomerAssignment(**dict(row)) if row else None

    async def assign(self, assignments: Sequence[CustomerAssignment]) -> set[UUID]:
        """Records each customer's first tier; the customers assigned now (not those who had one).
        One statement for all; rows go in in the given order, so the first of a customer wins."""
        if not assignments:
            return set()
        rows = await self._conn.fetch(
            "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, assigned_at, source, cause_event_id)"
            " SELECT m, c, t, a, s, e FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[],"
            " $5::text[], $6::uuid[]) WITH ORDINALITY AS x(m, c, t, a, s, e, n) ORDER BY n"
            " ON CONFLICT (merchant_id, customer_id) DO NOTHING RETURNING customer_id",
            *columns(assignments, "merchant_id", "customer_id", "tier_id", "assigned_at", "source", "cause_event_id"),
        )
        return {r["customer_id"] for r in rows}

    async def holders(self, tier_id: str) -> int:
        return int(
            await self._conn.fetchval(
                "SELECT count(*) FROM customer_tiers WHERE merchant_id = $1 AND tier_id = $2",
                self._merchant,
                tier_id,
            )
        )

    async def any(self) -> bool:
        return bool(
            await self._conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM customer_tiers WHERE merchant_id = $1)", self._merchant
            )
        )
