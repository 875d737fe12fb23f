"""Applying a tier/programme change to every customer of a merchant, set-based (issue 14).

ONE evaluation (EVALUATE_NOW below) decides, for a keyset chunk of a merchant's customers, who
moves where under a configuration and an apply mode. The configuration (ladder, programme) is a
PARAMETER of the statement, not read from the tables inside it, so the same text serves:

  * apply (a job chunk): the configuration in force, the chunk claimed FOR UPDATE, then the
    moves written (state; history by the table's triggers; one `vip_tier.assigned` outbox row
    each, reason `program_change` with the job id) and the job's cursor advanced, in the
    chunk's one transaction;
  * preview: a PROPOSED configuration (not stored anywhere), the same chunks read without
    locks in read-only transactions, aggregated to a from -> to matrix with samples;
  * deleting a held tier with a mode: the holders of that tier claimed and moved in the
    delete's own transaction.
So preview and apply cannot disagree: they run the same statement on the same rows.

The rules (domain.tier_changes says what the modes mean; the live path's rules are those of
domain.progression.on_entry):
  * points: the customer's current qualifying window at the stamp (programme.window_start: all
    days for lifetime, the local year, the last N months), as the live path sums on an event;
  * reached: the highest tier those points reach; floor: a manual floor still in force;
  * upgrades_only: reached above the current tier -> up; nothing else;
  * full: reached above -> up; else max(reached, floor, lowest) below the current tier -> down;
  * next_period: nobody moves (the deadline scheduler applies the new rules at each deadline);
  * the holders of a deleted tier always move: to max(reached, floor, the tier just below the
    deleted one, lowest) in upgrades_only / next_period (nobody loses more than the tier that
    went), to max(reached, floor, lowest) in full.
An upward move starts a new period at the stamp (as a live upgrade does) and earns the entry
bonus by the programme's policy; a downward move keeps the customer's period and deadline.
In the history row of a job's move, `cause_event_id` is the job id (reason `program_change`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from campaign_service.adapters.postgres.errors import translated
from campaign_service.adapters.postgres.progression import PgProgressionTransaction
from campaign_service.adapters.postgres.repositories.rows import Connection
from campaign_service.adapters.postgres.repositories.tier_change_jobs import JOB_COLUMNS, job_from_row
from campaign_service.domain.events import VIP_TIER_ASSIGNED
from campaign_service.domain.progression import Ladder, Programme
from campaign_service.domain.tier_changes import ApplyMode, ChunkResult, Matrix, TierChangeJob

MIN_UUID = UUID(int=0)
MAX_UUID = UUID(int=(1 << 128) - 1)

# $1 merchant, $2 keyset start (exclusive), $3 keyset end (inclusive), $4 limit, $5 stamp,
# $6 mode, $7 ladder tier ids (rank order), $8 their min_points, $9 their entry bonuses,
# $10 first local day of the window (NULL: lifetime), $11 period end and $12 deadline of an
# upward move (NULL: none), $13 entry-bonus policy, $14 programme version, $15 the deleted tiers
# whose holders move (empty: none), $16 for each of them the rank of the tier just below it that
# stays (-1: none), $17 only those tiers' holders.
_CLAIM = """
WITH claimed AS MATERIALIZED (
    SELECT ct.customer_id, ct.tier_id, ct.floor_tier_id, ct.floor_until, ct.held_tiers
    FROM customer_tiers ct
    WHERE ct.merchant_id = $1 AND ct.customer_id > $2 AND ct.customer_id <= $3
      AND (NOT $17::boolean OR ct.tier_id = ANY($15::text[]))
    ORDER BY ct.customer_id LIMIT $4 {lock}
)"""

EVALUATE_NOW = """, typed AS (  -- every parameter's type, for the tails that do not read them all
    SELECT $5::timestamptz, $6::text, $11::timestamptz, $12::timestamptz, $13::text, $14::bigint, $16::int[]
), bounds AS MATERIALIZED (
    SELECT (SELECT customer_id FROM claimed ORDER BY customer_id DESC LIMIT 1) AS hi,
           (SELECT count(*) FROM claimed) AS n
), sums AS MATERIALIZED (
    SELECT q.customer_id, sum(q.points)::bigint AS pts
    FROM qualifying_points_daily q
    WHERE q.merchant_id = $1 AND q.customer_id > $2 AND q.customer_id <= (SELECT hi FROM bounds)
      AND ($10::date IS NULL OR q.day >= $10::date)
      AND ($17::boolean IS FALSE OR q.customer_id IN (SELECT customer_id FROM claimed))
    GROUP BY q.customer_id
), ranked AS (
    SELECT c.customer_id, c.tier_id AS old_tier, c.held_tiers, coalesce(s.pts, 0) AS pts,
           c.tier_id = ANY($15::text[]) AS gone,
           CASE WHEN c.tier_id = ANY($15::text[]) THEN ($16::int[])[array_position($15::text[], c.tier_id)]
                ELSE coalesce(array_position($7::text[], c.tier_id) - 1, -1) END AS cur,
           width_bucket(greatest(coalesce(s.pts, 0), 0), $8::bigint[]) - 1 AS reached,
           CASE WHEN c.floor_tier_id IS NULL OR (c.floor_until IS NOT NULL AND c.floor_until <= $5) THEN -1
                ELSE coalesce(array_position($7::text[], c.floor_tier_id) - 1, -1) END AS floor_rank
    FROM claimed c LEFT JOIN sums s USING (customer_id)
), decided AS (
    SELECT r.*,
           CASE WHEN cardinality($7::text[]) = 0 THEN NULL
                WHEN r.gone AND $6 = 'full' THEN greatest(r.reached, r.floor_rank, 0)
                WHEN r.gone THEN greatest(r.reached, r.floor_rank, r.cur, 0)
                WHEN $6 = 'next_period' THEN NULL
                WHEN r.reached > r.cur THEN r.reached
                WHEN $6 = 'full' AND r.cur >= 0 AND greatest(r.reached, r.floor_rank, 0) < r.cur
                    THEN greatest(r.reached, r.floor_rank, 0)
           END AS to_rank
    FROM ranked r
), moves AS (  -- materialized by the apply tail, which reads it thrice
    SELECT d.customer_id, d.old_tier, d.pts, d.held_tiers, d.to_rank IS NOT NULL AS moving,
           ($7::text[])[d.to_rank + 1] AS new_tier,
           CASE WHEN d.to_rank > d.cur THEN 'up' ELSE 'down' END AS dir,
           CASE WHEN d.to_rank > d.cur
                     AND NOT ($13 = 'once_ever' AND ($7::text[])[d.to_rank + 1] = ANY(d.held_tiers))
                THEN ($9::bigint[])[d.to_rank + 1] ELSE 0 END AS bonus
    FROM decided d
)"""

# Apply: $18 job id, $19 topic.
_WRITE = """, written AS (
    UPDATE customer_tiers ct SET
        tier_id = m.new_tier, assigned_at = $5, source = 'program', cause_event_id = $18,
        held_tiers = ARRAY(SELECT DISTINCT h COLLATE "C" FROM unnest(m.held_tiers || m.new_tier) h ORDER BY 1),
        change_direction = m.dir, change_reason = 'program_change', changed_by = '',
        qualifying_points = m.pts, program_version = $14,
        period_end = CASE WHEN m.dir = 'up' THEN $11 ELSE ct.period_end END,
        deadline = CASE WHEN m.dir = 'up' THEN $12 ELSE ct.deadline END
    FROM moves m
    WHERE m.moving AND ct.merchant_id = $1 AND ct.customer_id = m.customer_id
      AND ct.customer_id > $2 AND ct.customer_id <= (SELECT hi FROM bounds)  -- the chunk's key range
    RETURNING 1
), announced AS (
    INSERT INTO outbox_events (event_id, merchant_id, topic, key, payload, headers)
    SELECT e.event_id, $1, $19, $1 || ':' || e.customer_id,
           jsonb_build_object(
               'event_id', e.event_id, 'customer_id', e.customer_id, 'merchant_id', $1,
               'tier_id', e.new_tier, 'assigned_at', floor(extract(epoch FROM $5::timestamptz) * 1000)::bigint,
               'correlation_id', e.correlation_id, 'cause_event_id', NULL, 'previous_tier_id', e.old_tier,
               'direction', e.dir, 'reason', 'program_change', 'bonus_points', e.bonus, 'program_version', $14,
               'job_id', $18),
           jsonb_build_object('correlation_id', e.correlation_id)
    FROM (SELECT m.*, gen_random_uuid() AS event_id, $18::text AS correlation_id
          FROM moves m WHERE m.moving ORDER BY m.customer_id) e
    RETURNING 1
)
SELECT b.n AS claimed, b.hi AS last, (SELECT count(*) FROM written) AS moved,
       (SELECT count(*) FROM announced) AS announced,
       (SELECT count(*) FROM moves WHERE moving AND dir = 'up') AS up
FROM bounds b
"""

# Preview: $18 samples per cell. One row per (from, to) cell; to = from for the unchanged.
_MATRIX = """
SELECT m.old_tier AS from_tier, CASE WHEN m.moving THEN m.new_tier ELSE m.old_tier END AS to_tier,
       CASE WHEN m.moving THEN m.dir END AS dir, count(*) AS n, sum(m.bonus) FILTER (WHERE m.moving) AS bonus,
       (array_agg(m.customer_id))[1:$18] AS samples,
       (SELECT n FROM bounds) AS claimed, (SELECT hi FROM bounds) AS last
FROM moves m GROUP BY 1, 2, 3
"""

APPLY_CHUNK = _CLAIM.format(lock="FOR UPDATE OF ct") + EVALUATE_NOW + _WRITE
PREVIEW_CHUNK = _CLAIM.format(lock="") + EVALUATE_NOW + _MATRIX


@dataclass(frozen=True)
class Configuration:
    """What a chunk is evaluated against: the ladder and programme (in force, or proposed), the
    mode, and optionally deleted tiers whose holders must move."""

    programme: Programme
    ladder: Ladder
    mode: ApplyMode
    gone_tiers: tuple[str, ...] = ()
    gone_below: tuple[int, ...] = ()  # for each, the rank in `ladder` of the tier just below it

    @staticmethod
    def deleting(programme: Programme, ladder: Ladder, mode: ApplyMode, *tier_ids: str) -> Configuration:
        """`ladder` still holding `tier_ids`: the configuration without them, their holders to
        move. The tier "just below" a deleted one is the nearest one below it that stays (with
        silver and gold both deleted, gold's holders keep at least bronze)."""
        gone = set(tier_ids)
        rest = Ladder(lv for lv in ladder.levels if lv.tier_id not in gone)
        below = []
        for tier_id in tier_ids:
            under = [lv for lv in ladder.levels[: max(ladder.rank(tier_id), 0)] if lv.tier_id not in gone]
            below.append(rest.rank(under[-1].tier_id) if under else -1)
        return Configuration(programme, rest, mode, tuple(tier_ids), tuple(below))

    def params(self, stamp: datetime) -> list[Any]:
        """$5..$16 of the statements."""
        p = self.programme
        first: date | None = p.window_start(stamp)
        period_end = p.period_end(stamp)
        return [
            stamp,
            self.mode,
            [lv.tier_id for lv in self.ladder.levels],
            [lv.min_points for lv in self.ladder.levels],
            [lv.bonus_points for lv in self.ladder.levels],
            first,
            period_end,
            p.deadline(period_end),
            p.entry_bonus,
            p.version,
            list(self.gone_tiers),
            list(self.gone_below),
        ]


async def preview_range(
    conn: Connection,
    merchant_id: UUID,
    config: Configuration,
    stamp: datetime,
    *,
    after: UUID = MIN_UUID,
    upto: UUID = MAX_UUID,
    chunk: int = 50_000,
    samples: int = 5,
    holders_only: bool = False,
) -> Matrix:
    """The preview of the customers in (after, upto], chunk by chunk, on `conn` (a transaction
    scoped to the merchant; nothing is written or locked)."""
    matrix = Matrix()
    params = config.params(stamp)
    while True:
        rows = await conn.fetch(
            PREVIEW_CHUNK, merchant_id, after, upto, chunk, *params, holders_only, samples
        )
        if not rows:
            return matrix
        for r in rows:
            matrix.add(r, samples)
        claimed = int(rows[0]["claimed"])
        matrix.customers += claimed
        if claimed < chunk:
            return matrix
        after = rows[0]["last"]


async def apply_chunk(
    conn: Connection,
    merchant_id: UUID,
    config: Configuration,
    stamp: datetime,
    job_id: UUID,
    *,
    after: UUID = MIN_UUID,
    upto: UUID = MAX_UUID,
    chunk: int,
    holders_only: bool = False,
) -> tuple[int, UUID | None, int, int]:
    """One chunk applied in the caller's transaction: (claimed, last key, moved, moved up)."""
    row = await conn.fetchrow(
        APPLY_CHUNK, merchant_id, after, upto, chunk, *config.params(stamp), holders_only, job_id, VIP_TIER_ASSIGNED
    )
    if row is None:  # an aggregate over `bounds` always answers one row
        raise RuntimeError("the apply statement answered no row")
    return int(row["claimed"]), row["last"], int(row["moved"]), int(row["up"])


# ------------------------------------------------------------------------------------------
# The engine: transactions around the statements.


class PgTierChangeEngine:
    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], acquire_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s

    async def runnable(self, at: datetime, limit: int) -> list[tuple[UUID, UUID]]:
        """(merchant, job) pairs that may run at `at` (SECURITY DEFINER, ids only; migration 0030)."""
        async with translated():
            rows = await self._pool.fetch(
                "SELECT merchant_id, job_id FROM campaign_runnable_tier_change_jobs($1, $2)", at, limit
            )
        return [(r["merchant_id"], r["job_id"]) for r in rows]

    async def setup(self, merchant_id: UUID) -> tuple[Programme, Ladder]:
        """The configuration in force (read-only transaction)."""
        async with self._scoped(merchant_id, readonly=True) as conn:
            return await _setup(conn, merchant_id)

    async def preview(
        self,
        merchant_id: UUID,
        config: Configuration,
        stamp: datetime,
        *,
        samples: int = 5,
        chunk: int = 50_000,
        workers: int = 2,
        holders_only: bool = False,
    ) -> Matrix:
        """The preview over every customer, split over `workers` key ranges evaluated at once (each
        in its own read-only transaction: the customer ids are random UUIDs, so ranges of the id
        space hold about as many customers each)."""
        bounds = [UUID(int=((1 << 128) - 1) * i // workers) for i in range(workers + 1)]
        starts = bounds[:-1]

        async def part(i: int) -> Matrix:
            async with self._scoped(merchant_id, readonly=True) as conn:
                return await preview_range(
                    conn, merchant_id, config, stamp, after=starts[i], upto=bounds[i + 1],
                    chunk=chunk, samples=samples, holders_only=holders_only,
                )  # fmt: skip

        total = Matrix()
        for m in await asyncio.gather(*(part(i) for i in range(workers))):
            total.merge(m, samples)
        return total

    async def preview_change(
        self, merchant_id: UUID, programme: Programme, ladder: Ladder, mode: ApplyMode, gone_tiers: Sequence[str],
        stamp: datetime, samples: int,
    ) -> Matrix:  # fmt: skip
        """The preview of a proposed configuration (service.tier_changes' port): `ladder` still
        holds the `gone_tiers` to be deleted."""
        config = Configuration.deleting(programme, ladder, mode, *gone_tiers)
        return await self.preview(merchant_id, config, stamp, samples=samples)

    async def get(self, merchant_id: UUID, job_id: UUID) -> TierChangeJob | None:
        async with self._scoped(merchant_id, readonly=True) as conn:
            row = await conn.fetchrow(
                f"SELECT {JOB_COLUMNS} FROM tier_change_jobs WHERE merchant_id = $1 AND job_id = $2",
                merchant_id,
                job_id,
            )
        return job_from_row(row) if row is not None else None

    async def run_chunk(self, merchant_id: UUID, job_id: UUID, stamp: datetime, chunk: int) -> ChunkResult:
        """One chunk of the job in ONE transaction: the job row locked (SKIP LOCKED: a runner
        holding it is running this job's chunk, so this one leaves it), the configuration in
        force read, the chunk after the job's cursor claimed, evaluated and written, the cursor
        and counters advanced; the job finished when the chunk was short. A kill -9 loses the
        transaction whole: the cursor stays where the last committed chunk left it."""
        async with self._scoped(merchant_id, readonly=False) as conn:
            row = await conn.fetchrow(
                f"SELECT {JOB_COLUMNS}, cursor FROM tier_change_jobs WHERE merchant_id = $1 AND job_id = $2"
                " AND state IN ('queued', 'running') FOR UPDATE SKIP LOCKED",
                merchant_id,
                job_id,
            )
            if row is None:
                return ChunkResult(None)
            if row["state"] == "queued":
                total = await conn.fetchval("SELECT count(*) FROM customer_tiers WHERE merchant_id = $1", merchant_id)
                await conn.execute(
                    "UPDATE tier_change_jobs SET state = 'running', started_at = $3, customers_total = $4"
                    " WHERE merchant_id = $1 AND job_id = $2",
                    merchant_id,
                    job_id,
                    stamp,
                    total,
                )
            programme, ladder = await _setup(conn, merchant_id)
            config = Configuration(programme, ladder, row["mode"])
            claimed, last, moved, up = await apply_chunk(
                conn, merchant_id, config, stamp, job_id, after=row["cursor"] or UUID(int=0), chunk=chunk
            )
            finished = claimed < chunk
            job = await conn.fetchrow(
                "UPDATE tier_change_jobs SET cursor = coalesce($3, cursor), customers_done = customers_done + $4,"
                " moved = moved + $5, state = CASE WHEN $6 THEN 'done' ELSE 'running' END,"
                " finished_at = CASE WHEN $6 THEN $7::timestamptz END,"
                " customers_total = greatest(customers_total, customers_done + $4)"
                f" WHERE merchant_id = $1 AND job_id = $2 RETURNING {JOB_COLUMNS}",
                merchant_id,
                job_id,
                last,
                claimed,
                moved,
                finished,
                stamp,
            )
            if job is None:  # the row is locked by this transaction
                raise RuntimeError(f"job {job_id} vanished while locked")
            return ChunkResult(job_from_row(job), claimed, moved, up, finished)

    async def fail(self, merchant_id: UUID, job_id: UUID, error: str, stamp: datetime) -> None:
        async with self._scoped(merchant_id, readonly=False) as conn:
            await conn.execute(
                "UPDATE tier_change_jobs SET state = 'failed', error = $3, finished_at = $4"
                " WHERE merchant_id = $1 AND job_id = $2 AND state IN ('queued', 'running')",
                merchant_id,
                job_id,
                error[:2000],
                stamp,
            )

    @asynccontextmanager
    async def _scoped(self, merchant_id: UUID, *, readonly: bool) -> AsyncIterator[Connection]:
        """A transaction scoped to one merchant (app.merchant_id; RLS applies), jit off."""
        async with (
            translated(),  # acquiring (pool exhausted, server down)
            self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
            translated(conn),
            conn.transaction(readonly=readonly),
        ):
            await conn.execute(
                "SELECT set_config('app.merchant_id', $1, true), set_config('jit', 'off', true)", str(merchant_id)
            )
            yield conn


def now_ms() -> datetime:
    now = datetime.now(UTC)  # timestamptz(3)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def setup_of(conn: Connection, merchant_id: UUID) -> tuple[Programme, Ladder]:
    """The merchant's programme and ladder in force, in the caller's transaction."""
    return await _setup(conn, merchant_id)


async def _setup(conn: Connection, merchant_id: UUID) -> tuple[Programme, Ladder]:
    setups = await PgProgressionTransaction(conn).setups([merchant_id])
    return setups.get(merchant_id, (Programme(), Ladder(())))


def dumps_matrix(matrix: Matrix) -> str:
    """A matrix as JSON (bench output)."""
    return json.dumps(
        {
            "customers": matrix.customers,
            "cells": [
                {"from": c.from_tier, "to": c.to_tier, "dir": c.direction, "n": c.customers, "bonus": c.bonus_points}
                for c in sorted(matrix.cells.values(), key=lambda c: (c.from_tier, c.to_tier))
            ],
        }
    )
