"""The programme and customer-status side of tier progression on PostgreSQL: one merchant's
transaction (`app.merchant_id` set, RLS applies), for the API's reads and its admin writes.
The engine's batch statements are in progression.py; nothing here is on its hot path."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from campaign_service.adapters.postgres.errors import translated
from campaign_service.adapters.postgres.progression import programme_from_row, state_from_row
from campaign_service.adapters.postgres.repositories.outbox import PgOutbox
from campaign_service.adapters.postgres.repositories.rows import Connection
from campaign_service.adapters.postgres.repositories.tier_change_jobs import PgTierChangeJobs
from campaign_service.adapters.postgres.repositories.tiers import PgTierRepository
from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.progression import Programme, TierState
from campaign_service.domain.tier_changes import ApplyMode
from campaign_service.domain.tiers import VIPTier
from campaign_service.service.progression_api_ports import (
    Erased,
    HistoryRow,
    ManualAssignment,
    StoredProgramme,
)

_PROGRAMME = (
    "SELECT window_kind, time_zone, window_months, downgrade_policy, grace_days, reversal_downgrades_now,"
    " entry_bonus, downgrade_warning_days, version, updated_at FROM tier_programs"
)


def _stored(row: Mapping[str, Any] | None) -> StoredProgramme:
    return StoredProgramme(programme_from_row(row), row["updated_at"] if row else None)


class PgProgressionApiTransaction:
    def __init__(self, conn: Connection, merchant_id: UUID) -> None:
        self._conn = conn
        self._merchant = merchant_id

    async def programme(self, *, for_update: bool = False) -> StoredProgramme:
        row = await self._conn.fetchrow(
            _PROGRAMME + " WHERE merchant_id = $1" + (" FOR UPDATE" if for_update else ""), self._merchant
        )
        return _stored(row)

    async def save_programme(self, p: Programme) -> StoredProgramme:
        row = await self._conn.fetchrow(
            "INSERT INTO tier_programs AS t (merchant_id, window_kind, time_zone, window_months, downgrade_policy,"
            " grace_days, reversal_downgrades_now, entry_bonus, downgrade_warning_days, version, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, now())"
            " ON CONFLICT (merchant_id) DO UPDATE SET window_kind = EXCLUDED.window_kind,"
            " time_zone = EXCLUDED.time_zone, window_months = EXCLUDED.window_months,"
            " downgrade_policy = EXCLUDED.downgrade_policy, grace_days = EXCLUDED.grace_days,"
            " reversal_downgrades_now = EXCLUDED.reversal_downgrades_now, entry_bonus = EXCLUDED.entry_bonus,"
            " downgrade_warning_days = EXCLUDED.downgrade_warning_days, version = t.version + 1, updated_at = now()"
            " RETURNING window_kind, time_zone, window_months, downgrade_policy, grace_days,"
            " reversal_downgrades_now, entry_bonus, downgrade_warning_days, version, updated_at",
            self._merchant,
            p.window,
            p.time_zone,
            p.window_months,
            p.downgrade_policy,
            p.grace_days,
            p.reversal_downgrades_now,
            p.entry_bonus,
            p.downgrade_warning_days,
        )
        return _stored(row)

    async def reschedule(self, period_end: datetime | None, deadline: datetime | None, version: int) -> int:
        status = await self._conn.execute(
            "UPDATE customer_tiers SET period_end = $2, deadline = $3, program_version = $4 WHERE merchant_id = $1",
            self._merchant,
            period_end,
            deadline,
            version,
        )
        return _count(status)

    async def regrace(self, grace_days: int, version: int) -> int:
        status = await self._conn.execute(
            "UPDATE customer_tiers SET deadline = period_end + make_interval(days => $2), program_version = $3"
            " WHERE merchant_id = $1 AND period_end IS NOT NULL",
            self._merchant,
            grace_days,
            version,
        )
        return _count(status)

    async def tiers(self) -> list[VIPTier]:
        return await PgTierRepository(self._conn, self._merchant).all()

    async def state(self, customer_id: UUID, *, for_update: bool = False) -> TierState | None:
        row = await self._conn.fetchrow(
            "SELECT tier_id, assigned_at, qualifying_points, period_end, deadline, floor_tier_id, floor_until,"
            " held_tiers, program_version FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2"
            + (" FOR UPDATE" if for_update else ""),
            self._merchant,
            customer_id,
        )
        return state_from_row(row)

    async def points(self, customer_id: UUID, first: date | None, end: date | None) -> int:
        value = await self._conn.fetchval(
            "SELECT coalesce(sum(points), 0)::bigint FROM qualifying_points_daily"
            " WHERE merchant_id = $1 AND customer_id = $2"
            " AND ($3::date IS NULL OR day >= $3) AND ($4::date IS NULL OR day < $4)",
            self._merchant,
            customer_id,
            first,
            end,
        )
        return int(value)

    async def history(self, customer_id: UUID, before_id: int | None, limit: int) -> list[HistoryRow]:
        rows = await self._conn.fetch(
            "SELECT id, from_tier_id, tier_id, assigned_at, direction, reason, program_version, qualifying_points,"
            " cause_event_id, actor, source, coalesce(config_version, 0) AS config_version FROM customer_tier_history"
            " WHERE merchant_id = $1 AND customer_id = $2 AND ($3::bigint IS NULL OR id < $3)"
            " ORDER BY id DESC LIMIT $4",
            self._merchant,
            customer_id,
            before_id,
            limit,
        )
        return [
            HistoryRow(
                id=r["id"],
                from_tier_id=r["from_tier_id"],
                tier_id=r["tier_id"],
                at=r["assigned_at"],
                direction=r["direction"],
                reason=r["reason"],
                program_version=r["program_version"],
                qualifying_points=r["qualifying_points"],
                cause_event_id=r["cause_event_id"],
                actor=r["actor"],
                source=r["source"],
                config_version=r["config_version"],
            )
            for r in rows
        ]

    async def assign(self, a: ManualAssignment) -> None:
        s = a.state
        await self._conn.execute(
            "INSERT INTO customer_tiers AS ct (merchant_id, customer_id, tier_id, assigned_at, source, cause_event_id,"
            " qualifying_points, period_end, deadline, floor_tier_id, floor_until, held_tiers, program_version,"
            " change_direction, change_reason, changed_by)"
            " VALUES ($1, $2, $3, $4, 'manual', NULL, $5, $6, $7, $8, $9, $10, $11, 'manual', 'manual', $12)"
            " ON CONFLICT (merchant_id, customer_id) DO UPDATE SET tier_id = EXCLUDED.tier_id,"
            " assigned_at = EXCLUDED.assigned_at, source = EXCLUDED.source, cause_event_id = NULL,"
            " qualifying_points = EXCLUDED.qualifying_points, period_end = EXCLUDED.period_end,"
            " deadline = EXCLUDED.deadline, floor_tier_id = EXCLUDED.floor_tier_id,"
            " floor_until = EXCLUDED.floor_until, held_tiers = EXCLUDED.held_tiers,"
            " program_version = EXCLUDED.program_version, change_direction = 'manual', change_reason = 'manual',"
            " changed_by = EXCLUDED.changed_by",
            self._merchant,
            a.customer_id,
            s.tier_id,
            s.since,
            s.qualifying_points,
            s.period_end,
            s.deadline,
            s.floor_tier_id,
            s.floor_until,
            sorted(s.held_tiers),
            s.program_version,
            a.actor,
        )
        await self._conn.execute(
            "INSERT INTO tier_manual_assignments (merchant_id, customer_id, tier_id, moved, floor_tier_id,"
            " floor_until, reason, actor) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            self._merchant,
            a.customer_id,
            s.tier_id,
            a.moved,
            s.floor_tier_id,
            s.floor_until,
            a.reason,
            a.actor,
        )

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        await PgOutbox(self._conn).add(messages)

    async def enqueue_reassessment(self, mode: ApplyMode) -> UUID | None:
        if not await self._conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM customer_tiers WHERE merchant_id = $1)", self._merchant
        ):
            return None
        # The version the configuration triggers (migration 0031) moved this transaction to.
        version = await self._conn.fetchval(
            "SELECT version FROM tier_config_heads WHERE merchant_id = $1", self._merchant
        )
        return await PgTierChangeJobs(self._conn, self._merchant).enqueue(
            uuid.uuid4(), mode=mode, config_version=int(version or 0)
        )

    async def merchant_exists(self) -> bool:
        return bool(await self._conn.fetchval("SELECT EXISTS (SELECT 1 FROM merchants WHERE id = $1)", self._merchant))

    async def mark_processed(self, event_id: UUID, event_type: str) -> bool:
        row = await self._conn.fetchval(
            "INSERT INTO processed_events (event_id, merchant_id, event_type) VALUES ($1, $2, $3)"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            event_id,
            self._merchant,
            event_type,
        )
        return row is not None

    async def erase(self, customer_id: UUID) -> Erased:
        """The state and points as the service role (RLS); the append-only history through the
        owner's narrowly scoped function (migration 0022)."""
        states = await self._conn.execute(
            "DELETE FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2", self._merchant, customer_id
        )
        days = await self._conn.execute(
            "DELETE FROM qualifying_points_daily WHERE merchant_id = $1 AND customer_id = $2",
            self._merchant,
            customer_id,
        )
        await self._conn.execute(
            "DELETE FROM tier_downgrade_warnings WHERE merchant_id = $1 AND customer_id = $2",
            self._merchant,
            customer_id,
        )
        history = await self._conn.fetchval("SELECT campaign_erase_customer_history($1)", customer_id)
        return Erased(states=_count(states), history=int(history), point_days=_count(days))

    async def warning_candidates(
        self, at: datetime, days: int, after: UUID | None, limit: int
    ) -> list[tuple[UUID, TierState, int]]:
        """Customers whose deadline is within `days` after `at` and who were not warned of it yet,
        in key order after `after` (rows another transaction holds are skipped), each with the
        points of the period assessed at the deadline (summed by the caller's programme: see
        `window_points`)."""
        rows = await self._conn.fetch(
            "SELECT ct.customer_id, ct.tier_id, ct.assigned_at, ct.qualifying_points, ct.period_end, ct.deadline,"
            " ct.floor_tier_id, ct.floor_until, ct.held_tiers, ct.program_version FROM customer_tiers ct"
            " WHERE ct.merchant_id = $1 AND ct.deadline > $2 AND ct.deadline <= $2 + make_interval(days => $3)"
            " AND ($4::uuid IS NULL OR ct.customer_id > $4)"
            " AND NOT EXISTS (SELECT 1 FROM tier_downgrade_warnings w WHERE w.merchant_id = ct.merchant_id"
            "   AND w.customer_id = ct.customer_id AND w.deadline = ct.deadline)"
            " ORDER BY ct.customer_id LIMIT $5 FOR UPDATE OF ct SKIP LOCKED",
            self._merchant,
            at,
            days,
            after,
            limit,
        )
        return [(r["customer_id"], state, 0) for r in rows if (state := state_from_row(r)) is not None]

    async def period_points(self, windows: Sequence[tuple[UUID, date, date]]) -> dict[UUID, int]:
        """Each customer's points over the local days [first, end)."""
        if not windows:
            return {}
        rows = await self._conn.fetch(
            "SELECT x.c, (SELECT coalesce(sum(q.points), 0) FROM qualifying_points_daily q"
            "   WHERE q.merchant_id = $1 AND q.customer_id = x.c AND q.day >= x.f AND q.day < x.e)::bigint AS points"
            " FROM unnest($2::uuid[], $3::date[], $4::date[]) AS x(c, f, e)",
            self._merchant,
            [w[0] for w in windows],
            [w[1] for w in windows],
            [w[2] for w in windows],
        )
        return {r["c"]: int(r["points"]) for r in rows}

    async def record_warnings(self, warned: Sequence[tuple[UUID, datetime]]) -> None:
        if not warned:
            return
        await self._conn.execute(
            "INSERT INTO tier_downgrade_warnings (merchant_id, customer_id, deadline)"
            " SELECT $1, c, d FROM unnest($2::uuid[], $3::timestamptz[]) AS x(c, d) ON CONFLICT DO NOTHING",
            self._merchant,
            [w[0] for w in warned],
            [w[1] for w in warned],
        )


def _count(status: str) -> int:
    """The row count of a command status such as `DELETE 3`."""
    return int(status.rsplit(" ", 1)[-1])


class PgProgressionApi:
    """Opens one merchant's transactions for service/progression_api.py."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], acquire_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s

    async def warning_merchants(self, at: datetime, limit: int) -> list[UUID]:
        """Merchants with customers to warn at `at` (ids only; SECURITY DEFINER, migration 0022)."""
        async with translated():
            rows = await self._pool.fetch("SELECT merchant_id FROM campaign_warning_merchants($1, $2)", at, limit)
        return [r["merchant_id"] for r in rows]

    async def due_backlog(self, at: datetime) -> tuple[int, datetime | None]:
        """How many customers are past their deadline at `at`, and the earliest such deadline."""
        async with translated():
            row = await self._pool.fetchrow("SELECT due, oldest FROM campaign_due_backlog($1)", at)
        return (int(row["due"]), row["oldest"]) if row else (0, None)

    @asynccontextmanager
    async def __call__(
        self, merchant_id: UUID, *, readonly: bool = False
    ) -> AsyncIterator[PgProgressionApiTransaction]:
        async with (
            translated(),
            self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
            translated(conn),
            conn.transaction(readonly=readonly),
        ):
            await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant_id))
            yield PgProgressionApiTransaction(conn, merchant_id)
