"""Scheduled configuration changes on PostgreSQL (migration 0031): one merchant's transaction
(`app.merchant_id` set, RLS applies) over `tier_scheduled_changes`, its tiers and programme, and
the activator's two cross-merchant reads (owner functions returning merchant ids and a time)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from campaign_service.adapters.postgres.errors import _check_failed, translated
from campaign_service.adapters.postgres.progression_reads import PgProgressionApiTransaction, _stored
from campaign_service.adapters.postgres.repositories.cache_epoch import PgCacheEpochBump
from campaign_service.adapters.postgres.repositories.locales import PgLocaleRepository
from campaign_service.adapters.postgres.repositories.outbox import PgOutbox
from campaign_service.adapters.postgres.repositories.rows import Connection
from campaign_service.adapters.postgres.repositories.tier_change_jobs import PgTierChangeJobs
from campaign_service.adapters.postgres.repositories.tiers import PgTierRepository, _spec_args, _tier
from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.errors import FailedPrecondition
from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.progression import Programme
from campaign_service.domain.scheduled import ChangeState, TierEdit
from campaign_service.domain.tier_changes import DEFAULT_APPLY_MODE, ApplyMode
from campaign_service.domain.tiers import TierSpec, VIPTier
from campaign_service.service.progression_api_ports import StoredProgramme
from campaign_service.service.scheduled_ports import NotKept, PastConfiguration, ScheduledChange

_CHANGE_COLUMNS = (
    "change_id, merchant_id, target, kind, payload, mode, effective_at, state, config_version, created_at,"
    " created_by, finished_at, error"
)


# The tiers of a kept configuration version, typed as the tier reads' columns.
_PAST_TIERS = """
SELECT t.* FROM tier_config_versions v,
    jsonb_to_recordset(v.tiers) AS t(id uuid, merchant_id uuid, tier_id text, name text, locale text,
        min_points integer, discount_percentage integer, free_shipping boolean, exclusive_access boolean,
        benefits jsonb, is_default boolean, version bigint, created_at timestamptz, updated_at timestamptz,
        translations jsonb)
WHERE v.merchant_id = $1 AND v.version = $2
ORDER BY t.min_points, t.tier_id
"""


def _spec_json(spec: TierSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "locale": spec.locale,
        "min_points": spec.min_points,
        "discount_percentage": spec.discount_percentage,
        "free_shipping": spec.free_shipping,
        "exclusive_access": spec.exclusive_access,
        "benefits": spec.benefits.to_json(),
        "translations": dict(spec.translations),
        "is_default": spec.is_default,
    }


def _spec_from_json(data: dict[str, Any]) -> TierSpec:
    benefits = data.get("benefits") or {}
    return TierSpec(
        name=str(data["name"]),
        locale=str(data["locale"]),
        min_points=int(data["min_points"]),
        discount_percentage=int(data["discount_percentage"]),
        free_shipping=bool(data["free_shipping"]),
        exclusive_access=bool(data["exclusive_access"]),
        benefits=Benefits(
            bonus_points=int(benefits.get("bonus_points", 0)),
            custom_perks=tuple(
                Perk(code=str(p["code"]), label={str(k): str(v) for k, v in p["label"].items()})
                for p in benefits.get("custom_perks", [])
            ),
        ),
        translations={str(k): str(v) for k, v in data.get("translations", {}).items()},
        is_default=bool(data["is_default"]),
    )


def _payload(change: ScheduledChange) -> dict[str, Any]:
    if change.tier is not None:
        t = change.tier
        return {
            "spec": _spec_json(t.spec) if t.spec is not None else None,
            "mask": sorted(t.mask),
            "id": str(t.new_id) if t.new_id else None,
        }
    assert change.program is not None
    p = change.program
    return {
        "program": {
            "window": p.window,
            "time_zone": p.time_zone,
            "window_months": p.window_months,
            "downgrade_policy": p.downgrade_policy,
            "grace_days": p.grace_days,
            "reversal_downgrades_now": p.reversal_downgrades_now,
            "entry_bonus": p.entry_bonus,
            "downgrade_warning_days": p.downgrade_warning_days,
        },
        "mask": list(change.program_mask),
    }


def _change(row: asyncpg.Record) -> ScheduledChange:
    payload = row["payload"]
    tier = program = None
    mask: tuple[str, ...] = ()
    if row["kind"] == "program_update":
        program = Programme(**payload["program"])
        mask = tuple(payload["mask"])
    else:
        tier = TierEdit(
            row["kind"],
            row["target"],
            _spec_from_json(payload["spec"]) if payload.get("spec") else None,
            frozenset(payload.get("mask") or ()),
            UUID(payload["id"]) if payload.get("id") else None,
        )
    return ScheduledChange(
        change_id=row["change_id"],
        merchant_id=row["merchant_id"],
        target=row["target"],
        kind=row["kind"],
        effective_at=row["effective_at"],
        mode=row["mode"],
        state=row["state"],
        tier=tier,
        program=program,
        program_mask=mask,
        created_at=row["created_at"],
        created_by=row["created_by"],
        config_version=row["config_version"],
        finished_at=row["finished_at"],
        error=row["error"],
    )


class PgScheduledTransaction:
    def __init__(self, conn: Connection, merchant_id: UUID) -> None:
        self._conn = conn
        self._merchant = merchant_id
        self._tiers = PgTierRepository(conn, merchant_id)
        self.progression = PgProgressionApiTransaction(conn, merchant_id)

    async def tiers(self, *, for_update: bool = False) -> list[VIPTier]:
        if for_update:
            await self._conn.execute(
                "SELECT 1 FROM vip_tiers WHERE merchant_id = $1 ORDER BY tier_id FOR UPDATE", self._merchant
            )
        return await self._tiers.all()

    async def tier(self, tier_id: str) -> VIPTier | None:
        return await self._tiers.get(tier_id)

    async def locales(self, *, lock: bool = False) -> tuple[str, ...]:
        if lock:  # FOR SHARE (migration 0040's function; it stores the default set if none is)
            locked: list[str] = await self._conn.fetchval("SELECT campaign_merchant_locales($1)", self._merchant)
            return tuple(locked)
        return (await PgLocaleRepository(self._conn, self._merchant).get()).locales

    async def configuration_at(self, at: datetime) -> PastConfiguration | NotKept:
        row = await self._conn.fetchrow(
            "SELECT version, programme IS NOT NULL AS has_programme FROM tier_config_versions"
            " WHERE merchant_id = $1 AND valid_from <= $2 ORDER BY version DESC LIMIT 1",
            self._merchant,
            at,
        )
        if row is None:
            first = await self._conn.fetchrow(
                "SELECT valid_from, seeded FROM tier_config_versions WHERE merchant_id = $1"
                " ORDER BY version LIMIT 1",
                self._merchant,
            )
            if first is not None and first["seeded"]:
                return NotKept(first["valid_from"])
            return PastConfiguration([], StoredProgramme(Programme(), None), 0)
        version = row["version"]
        tiers = await self._conn.fetch(_PAST_TIERS, self._merchant, version)
        programme = None
        if row["has_programme"]:
            programme = await self._conn.fetchrow(
                "SELECT p.* FROM tier_config_versions v, jsonb_populate_record(NULL::tier_programs, v.programme) p"
                " WHERE v.merchant_id = $1 AND v.version = $2",
                self._merchant,
                version,
            )
        return PastConfiguration([_tier(r) for r in tiers], _stored(programme), int(version))

    async def write_tiers(self, before: Sequence[VIPTier], after: Sequence[VIPTier], effective_at: datetime) -> None:
        old = {t.tier_id: t for t in before}
        new = {t.tier_id: t for t in after}
        # vip_tiers_touch stamps updated_at with this (migration 0031): the time it took effect.
        await self.take_effect_at(effective_at)
        for tier_id in sorted(old.keys() - new.keys()):
            try:
                async with self._conn.transaction():
                    await self._tiers.delete(tier_id)
            except asyncpg.ForeignKeyViolationError:
                raise FailedPrecondition(f"tier_id: customers hold tier {tier_id!r}; move them first") from None
        # Tiers that stop being the default first: at most one default at any moment.
        updates = [new[i] for i in sorted(old.keys() & new.keys()) if old[i] != new[i]]
        updates.sort(key=lambda t: t.spec.is_default)
        for tier in updates:
            changed = old[tier.tier_id].spec.changed_fields(tier.spec)
            try:
                await self._tiers.update(tier.tier_id, tier.spec, changed)
            except asyncpg.CheckViolationError as exc:
                raise _check_failed(exc) from None
        for tier_id in sorted(new.keys() - old.keys()):
            t = new[tier_id]
            try:
                async with self._conn.transaction():
                    await self._conn.execute(
                        "INSERT INTO vip_tiers (id, merchant_id, tier_id, name, locale, min_points,"
                        " discount_percentage, free_shipping, exclusive_access, benefits, is_default, version,"
                        " created_at, updated_at)"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 1, $12, $12)",
                        t.id,
                        self._merchant,
                        tier_id,
                        *_spec_args(t.spec),
                        t.created_at,
                    )
            except asyncpg.CheckViolationError as exc:
                raise _check_failed(exc) from None
            await self._tiers.write_translations(tier_id, t.spec.translations)

    async def take_effect_at(self, effective_at: datetime) -> None:
        # Until the commit: read by vip_tiers_touch (tiers' updated_at) and by the configuration
        # triggers (migrations 0031, 0032: the head's time, the configuration's valid_from).
        await self._conn.execute("SELECT set_config('app.effective_at', $1, true)", effective_at.isoformat())

    async def pending(self) -> list[ScheduledChange]:
        rows = await self._conn.fetch(
            f"SELECT {_CHANGE_COLUMNS} FROM tier_scheduled_changes WHERE merchant_id = $1 AND state = 'pending'"
            " ORDER BY effective_at, change_id",
            self._merchant,
        )
        return [_change(r) for r in rows]

    async def changes(self, *, include_finished: bool, limit: int) -> list[ScheduledChange]:
        rows = await self._conn.fetch(
            f"SELECT {_CHANGE_COLUMNS} FROM tier_scheduled_changes WHERE merchant_id = $1"
            " AND ($2 OR state = 'pending')"
            " ORDER BY state <> 'pending', CASE WHEN state = 'pending' THEN effective_at END,"
            " effective_at DESC, change_id LIMIT $3",
            self._merchant,
            include_finished,
            limit,
        )
        return [_change(r) for r in rows]

    async def get(self, change_id: UUID, *, for_update: bool = False) -> ScheduledChange | None:
        row = await self._conn.fetchrow(
            f"SELECT {_CHANGE_COLUMNS} FROM tier_scheduled_changes WHERE merchant_id = $1 AND change_id = $2"
            + (" FOR UPDATE" if for_update else ""),
            self._merchant,
            change_id,
        )
        return _change(row) if row else None

    async def insert(self, change: ScheduledChange) -> ScheduledChange:
        try:
            async with self._conn.transaction():
                row = await self._conn.fetchrow(
                    "INSERT INTO tier_scheduled_changes (merchant_id, change_id, target, kind, payload, mode,"
                    " effective_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                    f" RETURNING {_CHANGE_COLUMNS}",
                    self._merchant,
                    change.change_id,
                    change.target,
                    change.kind,
                    _payload(change),
                    change.mode,
                    change.effective_at,
                    change.created_by,
                )
        except asyncpg.UniqueViolationError:
            raise FailedPrecondition(
                f"effective_at: {change.target!r} has another pending change (committed concurrently); cancel it first"
            ) from None
        except asyncpg.ForeignKeyViolationError:
            raise FailedPrecondition("merchant_id: merchant is not provisioned") from None
        except asyncpg.CheckViolationError as exc:  # a locale not enabled (migration 0041)
            raise _check_failed(exc) from None
        assert row is not None
        return _change(row)

    async def claim_due(self, at: datetime) -> ScheduledChange | None:
        row = await self._conn.fetchrow(
            f"SELECT {_CHANGE_COLUMNS} FROM tier_scheduled_changes WHERE merchant_id = $1 AND state = 'pending'"
            " AND effective_at <= $2 ORDER BY effective_at, change_id LIMIT 1 FOR UPDATE SKIP LOCKED",
            self._merchant,
            at,
        )
        return _change(row) if row else None

    async def finish(
        self, change_id: UUID, state: ChangeState, *, config_version: int | None, error: str | None, actor: str
    ) -> None:
        await self._conn.execute(
            "UPDATE tier_scheduled_changes SET state = $3, config_version = $4, error = $5, finished_by = $6,"
            " finished_at = now() WHERE merchant_id = $1 AND change_id = $2",
            self._merchant,
            change_id,
            state,
            config_version,
            error,
            actor,
        )

    async def config_version(self) -> int:
        value = await self._conn.fetchval(
            "SELECT version FROM tier_config_heads WHERE merchant_id = $1", self._merchant
        )
        return int(value or 0)

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        await PgOutbox(self._conn).add(messages)

    async def bump_cache_epoch(self) -> None:
        await PgCacheEpochBump(self._conn).advance()

    async def enqueue_reassessment(
        self, change_id: UUID, mode: ApplyMode | None, config_version: int, not_before: datetime
    ) -> UUID:
        # tier_change_jobs and its enqueue function are the job engine's (migration 0030):
        # idempotent per change, rolled back with this transaction.
        job_id = await PgTierChangeJobs(self._conn, self._merchant).enqueue(
            change_id, mode=mode or DEFAULT_APPLY_MODE, config_version=config_version, not_before=not_before
        )
        await self._conn.execute(
            "UPDATE tier_change_jobs SET config_version = $3 WHERE merchant_id = $1 AND job_id = $2"
            " AND config_version <> $3 AND state = 'queued'",
            self._merchant,
            job_id,
            config_version,
        )
        return job_id

    async def move_holders(self, tier_id: str, mode: ApplyMode, job_id: UUID, stamp: datetime) -> int:
        return await PgTierChangeJobs(self._conn, self._merchant).move_holders(
            tier_id, mode=mode, job_id=job_id, stamp=stamp
        )

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        async with self._conn.transaction():
            yield


class PgScheduledChanges:
    """Opens one merchant's transactions for service/scheduled.py."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], acquire_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s

    async def due_merchants(self, at: datetime, limit: int) -> list[UUID]:
        async with translated():
            rows = await self._pool.fetch("SELECT merchant_id FROM campaign_due_config_changes($1, $2)", at, limit)
        return [r["merchant_id"] for r in rows]

    async def next_due(self) -> datetime | None:
        async with translated():
            value: datetime | None = await self._pool.fetchval("SELECT campaign_next_config_change()")
        return value

    @asynccontextmanager
    async def __call__(self, merchant_id: UUID, *, readonly: bool = False) -> AsyncIterator[PgScheduledTransaction]:
        async with (
            translated(),
            self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
            translated(conn),
            conn.transaction(readonly=readonly),
        ):
            await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant_id))
            yield PgScheduledTransaction(conn, merchant_id)
