"""The merchant-scoped unit of work on PostgreSQL: every transaction sets `app.merchant_id`
locally, so Row-Level Security confines each statement to that merchant's rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from campaign_service.adapters.postgres.errors import translated
from campaign_service.domain.benefits import Benefits
from campaign_service.domain.errors import (
    AlreadyExists,
    CampaignError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    VersionConflict,
)
from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.tiers import TierSpec, VIPTier
from campaign_service.service.ports import CustomerAssignment

_TIER_COLUMNS = """
    t.id, t.merchant_id, t.tier_id, t.name, t.locale, t.min_points, t.discount_percentage,
    t.free_shipping, t.exclusive_access, t.benefits, t.is_default, t.version, t.created_at,
    t.updated_at,
    coalesce((SELECT jsonb_object_agg(tr.locale, tr.name) FROM vip_tier_translations tr
              WHERE tr.merchant_id = t.merchant_id AND tr.tier_id = t.tier_id), '{}'::jsonb)
        AS translations
"""


def _tier(row: asyncpg.Record) -> VIPTier:
    return VIPTier(
        id=row["id"],
        merchant_id=row["merchant_id"],
        tier_id=row["tier_id"],
        spec=TierSpec(
            name=row["name"],
            locale=row["locale"],
            min_points=row["min_points"],
            discount_percentage=row["discount_percentage"],
            free_shipping=row["free_shipping"],
            exclusive_access=row["exclusive_access"],
            benefits=Benefits.from_json(row["benefits"]),
            translations=dict(row["translations"]),
            is_default=row["is_default"],
        ),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _spec_args(spec: TierSpec) -> tuple[Any, ...]:
    return (
        spec.name,
        spec.locale,
        spec.min_points,
        spec.discount_percentage,
        spec.free_shipping,
        spec.exclusive_access,
        spec.benefits.to_json(),
        spec.is_default,
    )


class PgTenantTransaction:
    def __init__(self, conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any], merchant_id: UUID) -> None:
        self._conn = conn
        self._merchant = merchant_id

    async def get_tier(self, tier_id: str, *, for_update: bool = False) -> VIPTier | None:
        lock = " FOR UPDATE OF t" if for_update else ""
        row = await self._conn.fetchrow(
            f"SELECT {_TIER_COLUMNS} FROM vip_tiers t WHERE t.merchant_id = $1 AND t.tier_id = $2{lock}",
            self._merchant,
            tier_id,
        )
        return _tier(row) if row else None

    async def list_tiers(self) -> list[VIPTier]:
        rows = await self._conn.fetch(
            f"SELECT {_TIER_COLUMNS} FROM vip_tiers t WHERE t.merchant_id = $1 ORDER BY t.min_points, t.tier_id",
            self._merchant,
        )
        return [_tier(r) for r in rows]

    async def count_tiers(self) -> int:
        return int(await self._conn.fetchval("SELECT count(*) FROM vip_tiers WHERE merchant_id = $1", self._merchant))

    async def evaluate(self, points: int) -> VIPTier | None:
        row = await self._conn.fetchrow(
            f"SELECT {_TIER_COLUMNS} FROM vip_tiers t WHERE t.merchant_id = $1 AND t.min_points <= $2"
            " ORDER BY t.min_points DESC, t.tier_id DESC LIMIT 1",
            self._merchant,
            points,
        )
        return _tier(row) if row else None

    async def default_tier(self) -> VIPTier | None:
        row = await self._conn.fetchrow(
            f"SELECT {_TIER_COLUMNS} FROM vip_tiers t WHERE t.merchant_id = $1 AND t.is_default",
            self._merchant,
        )
        return _tier(row) if row else None

    async def insert_tier(self, tier_id: str, spec: TierSpec) -> VIPTier:
        try:
            async with self._conn.transaction():  # a savepoint: the error must not poison the tx
                await self._conn.execute(
                    "INSERT INTO vip_tiers (merchant_id, tier_id, name, locale, min_points,"
                    " discount_percentage, free_shipping, exclusive_access, benefits, is_default)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    self._merchant,
                    tier_id,
                    *_spec_args(spec),
                )
        except asyncpg.UniqueViolationError as exc:
            raise _unique_failed(exc, tier_id) from None
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("merchant is not provisioned") from None
        except asyncpg.CheckViolationError as exc:
            raise _check_failed(exc) from None
        await self._write_translations(tier_id, spec.translations)
        tier = await self.get_tier(tier_id)
        assert tier is not None
        return tier

    async def update_tier(self, tier_id: str, spec: TierSpec, changed: Sequence[str]) -> VIPTier:
        try:
            async with self._conn.transaction():
                await self._conn.execute(
                    "UPDATE vip_tiers SET name = $3, locale = $4, min_points = $5,"
                    " discount_percentage = $6, free_shipping = $7, exclusive_access = $8,"
                    " benefits = $9, is_default = $10 WHERE merchant_id = $1 AND tier_id = $2",
                    self._merchant,
                    tier_id,
                    *_spec_args(spec),
                )
        except asyncpg.CheckViolationError as exc:
            raise _check_failed(exc) from None
        except asyncpg.UniqueViolationError as exc:
            raise _unique_failed(exc, tier_id) from None
        if "translations" in changed:
            await self._conn.execute(
                "DELETE FROM vip_tier_translations WHERE merchant_id = $1 AND tier_id = $2",
                self._merchant,
                tier_id,
            )
            await self._write_translations(tier_id, spec.translations)
        tier = await self.get_tier(tier_id)
        assert tier is not None
        return tier

    async def _write_translations(self, tier_id: str, translations: dict[str, str]) -> None:
        if translations:
            await self._conn.executemany(
                "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name) VALUES ($1, $2, $3, $4)",
                [(self._merchant, tier_id, loc, name) for loc, name in translations.items()],
            )

    async def clear_default(self, except_tier_id: str) -> list[str]:
        rows = await self._conn.fetch(
            "UPDATE vip_tiers SET is_default = false WHERE merchant_id = $1 AND is_default"
            " AND tier_id <> $2 RETURNING tier_id",
            self._merchant,
            except_tier_id,
        )
        return [r["tier_id"] for r in rows]

    async def delete_tier(self, tier_id: str) -> None:
        await self._conn.execute(
            "DELETE FROM vip_tiers WHERE merchant_id = $1 AND tier_id = $2", self._merchant, tier_id
        )

    async def customers_holding(self, tier_id: str) -> int:
        return int(
            await self._conn.fetchval(
                "SELECT count(*) FROM customer_tiers WHERE merchant_id = $1 AND tier_id = $2",
                self._merchant,
                tier_id,
            )
        )

    async def get_customer(self, customer_id: UUID) -> CustomerAssignment | None:
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
            *_columns(assignments, "merchant_id", "customer_id", "tier_id", "assigned_at", "source", "cause_event_id"),
        )
        return {r["customer_id"] for r in rows}

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

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        """Writes the messages in one statement; the relay publishes them in this order (seq)."""
        if not messages:
            return
        await self._conn.execute(
            "INSERT INTO outbox_events (event_id, merchant_id, topic, key, payload, headers)"
            " SELECT e, m, t, k, p, h FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[],"
            " $6::jsonb[]) WITH ORDINALITY AS x(e, m, t, k, p, h, n) ORDER BY n",
            *_columns(messages, "event_id", "merchant_id", "topic", "key", "payload", "headers"),
        )


def _columns(rows: Sequence[object], *fields: str) -> list[list[Any]]:
    """One array per field, for a multi-row INSERT ... SELECT FROM unnest($1, $2, ...)."""
    return [[getattr(row, name) for row in rows] for name in fields]


def _unique_failed(exc: asyncpg.UniqueViolationError, tier_id: str) -> CampaignError:
    # Partition indexes carry their own names (vip_tiers_p3_..._default...), so match by part.
    if "default" in (exc.constraint_name or ""):
        return VersionConflict("another default tier was set concurrently; retry")
    return AlreadyExists(f"tier {tier_id!r} already exists")


def _check_failed(exc: asyncpg.CheckViolationError) -> InvalidArgument:
    # Trigger messages start with the field path ("benefits.custom_perks: ..."); constraint
    # names are ours. Neither carries SQL or data.
    message = str(exc.message) if exc.constraint_name is None else f"violates {exc.constraint_name}"
    field, _, description = message.partition(": ")
    return InvalidArgument([FieldViolation(f"tier.{field}" if description else "tier", description or message)])


class PgUnitOfWork:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], acquire_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s

    @asynccontextmanager
    async def __call__(self, merchant_id: UUID, *, readonly: bool = False) -> AsyncIterator[PgTenantTransaction]:
        async with (
            translated(),
            self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
            translated(conn),
            conn.transaction(readonly=readonly),
        ):
            await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant_id))
            yield PgTenantTransaction(conn, merchant_id)
