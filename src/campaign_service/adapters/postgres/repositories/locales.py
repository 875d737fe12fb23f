"""The locales a merchant stores text in: merchant_locales (migration 0040)."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from campaign_service.adapters.postgres.repositories.rows import Connection
from campaign_service.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from campaign_service.domain.locales import MerchantLocales


def _locales(row: asyncpg.Record | None) -> MerchantLocales:
    if row is None:
        return MerchantLocales()
    return MerchantLocales(tuple(row["locales"]), row["version"], row["updated_at"])


class PgLocaleRepository:
    def __init__(self, conn: Connection, merchant_id: UUID) -> None:
        self._conn = conn
        self._merchant = merchant_id

    async def get(self, *, for_update: bool = False) -> MerchantLocales:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow(
            f"SELECT locales, version, updated_at FROM merchant_locales WHERE merchant_id = $1{lock}",
            self._merchant,
        )
        return _locales(row)

    async def save(self, locales: tuple[str, ...]) -> MerchantLocales:
        try:
            async with self._conn.transaction():  # a savepoint: the error must not poison the tx
                row = await self._conn.fetchrow(
                    "INSERT INTO merchant_locales (merchant_id, locales) VALUES ($1, $2)"
                    " ON CONFLICT (merchant_id) DO UPDATE SET locales = EXCLUDED.locales"
                    " RETURNING locales, version, updated_at",
                    self._merchant,
                    list(locales),
                )
        except asyncpg.ForeignKeyViolationError:
            raise NotFound("merchant is not provisioned") from None
        except asyncpg.RestrictViolationError as exc:  # a removed locale is still used (0041)
            raise FailedPrecondition(str(exc.message).removeprefix("locales: ")) from None
        except asyncpg.CheckViolationError as exc:
            # Trigger messages start with the field ("locales: fr still holds tier text").
            field, _, description = str(exc.message).partition(": ")
            raise InvalidArgument([FieldViolation(field if description else "locales", description or field)]) from None
        return _locales(row)

    async def scheduled_uses(self) -> list[tuple[str, frozenset[str]]]:
        rows = await self._conn.fetch(
            "SELECT c.change_id, c.kind, c.target, array_agg(l) AS locales"
            " FROM tier_scheduled_changes c, campaign_scheduled_locales(c.payload) AS l"
            " WHERE c.merchant_id = $1 AND c.state = 'pending' AND c.kind IN ('tier_create', 'tier_update')"
            " GROUP BY c.change_id, c.kind, c.target, c.effective_at ORDER BY c.effective_at, c.change_id",
            self._merchant,
        )
        return [(f"scheduled {r['kind']} of {r['target']} ({r['change_id']})", frozenset(r["locales"])) for r in rows]
