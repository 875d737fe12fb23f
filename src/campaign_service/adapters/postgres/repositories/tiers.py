"""A merchant's VIP tier definitions: vip_tiers and their name translations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg

from campaign_service.adapters.postgres.errors import _check_failed, _unique_failed
from campaign_service.adapters.postgres.repositories.rows import Connection
from campaign_service.domain.benefits import Benefits
from campaign_service.domain.errors import NotFound
from campaign_service.domain.tiers import TierSpec, VIPTier

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


class PgTierRepository:
    def __init__(self, conn: Connection, merchant_id: UUID) -> None:
        self._conn = conn
        self._merchant = merchant_id

    async def get(self, tier_id: str, *, for_update: bool = False) -> VIPTier | None:
        lock = " FOR UPDATE OF t" if for_update else ""
        row = await self._conn.fetchrow(
            f"SELECT {_TIER_COLUMNS} FROM vip_tiers t WHERE t.merchant_id = $1 AND t.tier_id = $2{lock}",
            self._merchant,
            tier_id,
        )
        return _tier(row) if row else None

    async def all(self) -> list[VIPTier]:
        rows = await self._conn.fetch(
            f"SELECT {_TIER_COLUMNS} FROM vip_tiers t WHERE t.merchant_id = $1 ORDER BY t.min_points, t.tier_id",
            self._merchant,
        )
        return [_tier(r) for r in rows]

    async def count(self) -> int:
        return int(await self._conn.fetchval("SELECT count(*) FROM vip_tiers WHERE merchant_id = $1", self._merchant))

    async def evaluate(self, points: int) -> VIPTier | None:
        row = await self._conn.fetchrow(
            f"SELECT {_TIER_COLUMNS} FROM vip_tiers t WHERE t.merchant_id = $1 AND t.min_points <= $2"
            " ORDER BY t.min_points DESC, t.tier_id DESC LIMIT 1",
            self._merchant,
            points,
        )
        return _tier(row) if row else None

    async def default(self) -> VIPTier | None:
        row = await self._conn.fetchrow(
            f"SELECT {_TIER_COLUMNS} FROM vip_tiers t WHERE t.merchant_id = $1 AND t.is_default",
            self._merchant,
        )
        return _tier(row) if row else None

    async def insert(self, tier_id: str, spec: TierSpec) -> VIPTier:
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
        await self.write_translations(tier_id, spec.translations)
        tier = await self.get(tier_id)
        assert tier is not None
        return tier

    async def update(self, tier_id: str, spec: TierSpec, changed: Sequence[str]) -> VIPTier:
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
            await self.write_translations(tier_id, spec.translations)
        tier = await self.get(tier_id)
        assert tier is not None
        return tier

    async def write_translations(self, tier_id: str, translations: dict[str, str]) -> None:
        if translations:
            try:
                async with self._conn.transaction():
                    await self._conn.executemany(
                        "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name)"
                        " VALUES ($1, $2, $3, $4)",
                        [(self._merchant, tier_id, loc, name) for loc, name in translations.items()],
                    )
            except asyncpg.CheckViolationError as exc:  # a locale not enabled (migration 0040)
                raise _check_failed(exc) from None

    async def clear_default(self, except_tier_id: str) -> list[str]:
        rows = await self._conn.fetch(
            "UPDATE vip_tiers SET is_default = false WHERE merchant_id = $1 AND is_default"
            " AND tier_id <> $2 RETURNING tier_id",
            self._merchant,
            except_tier_id,
        )
        return [r["tier_id"] for r in rows]

    async def delete(self, tier_id: str) -> None:
        await self._conn.execute(
            "DELETE FROM vip_tiers WHERE merchant_id = $1 AND tier_id = $2", self._merchant, tier_id
        )
