"""Tier progression on PostgreSQL: transactions scoped to a SET of merchants (a consumer batch, a
scheduler chunk) and the set-based statements the engine needs.

`app.merchant_ids` holds the scope (a JSON object keyed by merchant id); every tenant policy
admits only those merchants (see migration 0020), so RLS confines each statement to the batch's
merchants and no role bypasses it.
Each method is one statement for all the customers it is given, whatever their number.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from campaign_service.adapters.postgres.errors import translated
from campaign_service.domain.events import VIP_TIER_ASSIGNED, OutboxMessage
from campaign_service.domain.progression import Ladder, Level, Programme, TierState
from campaign_service.service.progression_ports import CustomerKey, StateWrite

_PROGRAMME_COLUMNS = (
    "window_kind, time_zone, window_months, downgrade_policy, grace_days, reversal_downgrades_now,"
    " entry_bonus, downgrade_warning_days, version"
)


def programme_from_row(row: Mapping[str, Any] | None) -> Programme:
    if row is None or row["version"] is None:
        return Programme()
    return Programme(
        window=row["window_kind"],
        time_zone=row["time_zone"],
        window_months=row["window_months"],
        downgrade_policy=row["downgrade_policy"],
        grace_days=row["grace_days"],
        reversal_downgrades_now=row["reversal_downgrades_now"],
        entry_bonus=row["entry_bonus"],
        downgrade_warning_days=row["downgrade_warning_days"],
        version=row["version"],
    )


def state_from_row(row: Mapping[str, Any] | None) -> TierState | None:
    """A customer's tier state from the _STATE_COLUMNS of a row; None without a row or a tier."""
    if row is None or row["tier_id"] is None:
        return None
    return TierState(
        tier_id=row["tier_id"],
        since=row["assigned_at"],
        qualifying_points=row["qualifying_points"],
        period_end=row["period_end"],
        deadline=row["deadline"],
        floor_tier_id=row["floor_tier_id"],
        floor_until=row["floor_until"],
        held_tiers=frozenset(row["held_tiers"]),
        program_version=row["program_version"],
    )


_STATE_COLUMNS = (
    "ct.tier_id, ct.assigned_at, ct.qualifying_points, ct.period_end, ct.deadline, ct.floor_tier_id,"
    " ct.floor_until, ct.held_tiers, ct.program_version"
)


class PgProgressionTransaction:
    def __init__(self, conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any]) -> None:
        self._conn = conn

    async def setups(self, merchants: Sequence[UUID]) -> dict[UUID, tuple[Programme, Ladder]]:
        """Programme and tiers of each provisioned merchant among `merchants` (others are absent)."""
        rows = await self._conn.fetch(
            f"SELECT m.id, {', '.join('p.' + c.strip() for c in _PROGRAMME_COLUMNS.split(','))},"
            " (SELECT coalesce(json_agg(json_build_array(t.tier_id, t.min_points,"
            "   coalesce((t.benefits->>'bonus_points')::bigint, 0), t.is_default)), '[]')"
            "  FROM vip_tiers t WHERE t.merchant_id = m.id) AS tiers"
            " FROM merchants m LEFT JOIN tier_programs p ON p.merchant_id = m.id WHERE m.id = ANY($1::uuid[])",
            list(merchants),
        )
        return {
            r["id"]: (programme_from_row(r), Ladder(Level(t, int(mp), int(b), bool(d)) for t, mp, b, d in r["tiers"]))
            for r in rows
        }

    async def mark_processed(self, events: Sequence[tuple[UUID, UUID]], event_type: str) -> set[UUID]:
        """Records (event_id, merchant_id) pairs as processed; the ids recorded now (the rest are duplicates)."""
        if not events:
            return set()
        rows = await self._conn.fetch(
            "INSERT INTO processed_events (event_id, merchant_id, event_type)"
            " SELECT e, m, $3 FROM unnest($1::uuid[], $2::uuid[]) AS x(e, m)"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            [e for e, _ in events],
            [m for _, m in events],
            event_type,
        )
        return {r["event_id"] for r in rows}

    async def add_points(self, buckets: Mapping[tuple[UUID, UUID, date], int]) -> None:
        """Adds points to (merchant, customer, local day) buckets; rows in key order (lock order)."""
        if not buckets:
            return
        keys = sorted(buckets)
        await self._conn.execute(
            "INSERT INTO qualifying_points_daily AS q (merchant_id, customer_id, day, points)"
            " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::date[], $4::bigint[])"
            " ON CONFLICT (merchant_id, customer_id, day) DO UPDATE SET points = q.points + EXCLUDED.points",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [buckets[k] for k in keys],
        )

    async def lock_customers(
        self, customers: Mapping[CustomerKey, tuple[date | None, date | None]]
    ) -> dict[CustomerKey, tuple[TierState | None, int]]:
        """Locks the customers' tier rows (key order) and sums their points over [first, end) days
        (None: unbounded); the state (None: no tier yet) and the sum of each."""
        if not customers:
            return {}
        keys = sorted(customers)
        # A nested loop of key lookups (LATERAL): a join let the planner hash every row of the
        # scope's merchants. Rows are locked in the order of `keys` (sorted: one lock order).
        rows = await self._conn.fetch(
            f"SELECT x.m, x.c, {_STATE_COLUMNS},"
            " (SELECT coalesce(sum(q.points), 0) FROM qualifying_points_daily q"
            "   WHERE q.merchant_id = x.m AND q.customer_id = x.c"
            "   AND (x.f IS NULL OR q.day >= x.f) AND (x.e IS NULL OR q.day < x.e))::bigint AS points"
            " FROM unnest($1::uuid[], $2::uuid[], $3::date[], $4::date[]) AS x(m, c, f, e)"
            " LEFT JOIN LATERAL (SELECT * FROM customer_tiers t WHERE t.merchant_id = x.m AND t.customer_id = x.c"
            "   FOR UPDATE) ct ON true",
            [k[0] for k in keys],
            [k[1] for k in keys],
            [customers[k][0] for k in keys],
            [customers[k][1] for k in keys],
        )
        return {(r["m"], r["c"]): (state_from_row(r), int(r["points"])) for r in rows}

    async def write_states(self, writes: Sequence[StateWrite]) -> None:
        """Inserts or updates the customers' tier rows in one statement; the history triggers
        record the moves (rows whose tier did not change add no history)."""
        if not writes:
            return
        ws = sorted(writes, key=lambda w: (w.merchant_id, w.customer_id))
        await self._conn.execute(
            "INSERT INTO customer_tiers AS ct (merchant_id, customer_id, tier_id, assigned_at, source, cause_event_id,"
            " qualifying_points, period_end, deadline, held_tiers, program_version, change_direction, change_reason,"
            " changed_by)"
            " SELECT m, c, t, a, s, e, q, pe, d, string_to_array(h, ','), v, dir, r, actor"
            " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], $6::uuid[],"
            " $7::bigint[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::bigint[], $12::text[],"
            " $13::text[], $14::text[]) AS x(m, c, t, a, s, e, q, pe, d, h, v, dir, r, actor)"
            " ON CONFLICT (merchant_id, customer_id) DO UPDATE SET tier_id = EXCLUDED.tier_id,"
            " assigned_at = EXCLUDED.assigned_at, source = EXCLUDED.source, cause_event_id = EXCLUDED.cause_event_id,"
            " qualifying_points = EXCLUDED.qualifying_points, period_end = EXCLUDED.period_end,"
            " deadline = EXCLUDED.deadline, held_tiers = EXCLUDED.held_tiers,"
            " program_version = EXCLUDED.program_version, change_direction = EXCLUDED.change_direction,"
            " change_reason = EXCLUDED.change_reason, changed_by = EXCLUDED.changed_by",
            *_state_columns(ws),
        )

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        if not messages:
            return
        await self._conn.execute(
            "INSERT INTO outbox_events (event_id, merchant_id, topic, key, payload, headers)"
            " SELECT e, m, t, k, p, h FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[],"
            " $6::jsonb[]) WITH ORDINALITY AS x(e, m, t, k, p, h, n) ORDER BY n",
            [m.event_id for m in messages],
            [m.merchant_id for m in messages],
            [m.topic for m in messages],
            [m.key for m in messages],
            [m.payload for m in messages],
            [m.headers for m in messages],
        )

    async def reassess_due(
        self, merchants: Sequence[UUID], at: datetime, stamp: datetime, limit: int, after: CustomerKey | None
    ) -> tuple[int, CustomerKey | None, list[tuple[str, str, int]]]:
        """The scheduler's chunk in ONE statement: claims up to `limit` due customers of
        `merchants` (FOR UPDATE SKIP LOCKED, key order after `after`), applies
        domain.progression.at_deadline to each in SQL (_REASSESS, the same rules set-based),
        writes the moves (history from the table's triggers), their `vip_tier.assigned` outbox
        rows and the kept customers' next period.
        (claimed, last claimed key, [(direction, reason, moves)])."""
        first, last = min(merchants), max(merchants)
        after_m, after_c = after if after is not None else (first, UUID(int=0))
        rows = await self._conn.fetch(_REASSESS, at, limit, after_m, after_c, last, stamp, VIP_TIER_ASSIGNED)
        claimed = sum(int(r["n"]) for r in rows)
        if not claimed:
            return 0, None, []
        last_key = next((r["last_m"], r["last_c"]) for r in rows if r["last_m"] is not None)
        moves = [(r["dir"], r["reason"], int(r["n"])) for r in rows if r["dir"] is not None]
        return claimed, last_key, moves


def _state_columns(ws: Sequence[StateWrite]) -> list[list[Any]]:
    return [
        [w.merchant_id for w in ws],
        [w.customer_id for w in ws],
        [w.state.tier_id for w in ws],
        [w.state.since for w in ws],
        [w.source for w in ws],
        [w.cause_event_id for w in ws],
        [w.state.qualifying_points for w in ws],
        [w.state.period_end for w in ws],
        [w.state.deadline for w in ws],
        [",".join(sorted(w.state.held_tiers)) for w in ws],
        [w.state.program_version for w in ws],
        [w.direction for w in ws],
        [w.reason for w in ws],
        [w.actor for w in ws],
    ]


class PgProgression:
    """Opens transactions scoped to a set of merchants."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], acquire_timeout_s: float = 5.0) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s

    async def due_merchants(self, at: datetime, limit: int) -> list[tuple[UUID, int]]:
        """Merchants with customers due at `at` and how many, earliest deadline first: the only
        cross-merchant read, ids and counts only (SECURITY DEFINER function, migration 0020)."""
        async with translated():
            rows = await self._pool.fetch("SELECT merchant_id, due FROM campaign_due_merchants($1, $2)", at, limit)
        return [(r["merchant_id"], int(r["due"])) for r in rows]

    @asynccontextmanager
    async def __call__(self, merchants: Sequence[UUID]) -> AsyncIterator[PgProgressionTransaction]:
        scope = json.dumps(dict.fromkeys(map(str, sorted(set(merchants))), True))  # see migration 0020
        async with (
            translated(),  # acquiring (pool exhausted, server down)
            self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
            translated(conn),  # the transaction, while we hold the connection to ask about it
            conn.transaction(),
        ):
            # jit off: a batch's statements are short, and compiling them cost more than running them.
            await conn.execute("SELECT set_config('app.merchant_ids', $1, true), set_config('jit', 'off', true)", scope)
            yield PgProgressionTransaction(conn)


# domain.progression.at_deadline, set-based (keep the two in step; tests/integration/
# test_deadline_scheduler.py runs this one). $1 at, $2 limit, $3/$4 keyset start, $5 last merchant
# of the group, $6 the move's timestamp (ms), $7 the topic. The ladder of each merchant as arrays
# in rank order (min_points, tier_id in code-point order, as Ladder); ranks are 0-based.
_REASSESS = """
WITH claimed AS MATERIALIZED (
    SELECT ct.merchant_id, ct.customer_id, ct.tier_id, ct.period_end, ct.floor_tier_id, ct.floor_until,
           ct.held_tiers, ct.program_version
    FROM customer_tiers ct
    WHERE ct.merchant_id BETWEEN $3 AND $5 AND ct.deadline <= $1 AND (ct.merchant_id, ct.customer_id) > ($3, $4)
    ORDER BY ct.merchant_id, ct.customer_id LIMIT $2 FOR UPDATE OF ct SKIP LOCKED
), ms AS MATERIALIZED (
    SELECT DISTINCT merchant_id FROM claimed
), setup AS MATERIALIZED (
    SELECT ms.merchant_id,
           coalesce(p.window_kind <> 'lifetime' AND p.downgrade_policy <> 'never', false) AS has_deadlines,
           p.time_zone, p.grace_days, p.downgrade_policy, p.entry_bonus, coalesce(p.version, 0) AS version,
           CASE p.window_kind WHEN 'calendar_year' THEN 12 ELSE coalesce(p.window_months, 1) END AS months,
           coalesce(l.ids, '{}') AS ids, coalesce(l.mins, '{}') AS mins, coalesce(l.bonuses, '{}') AS bonuses
    FROM ms
    LEFT JOIN tier_programs p ON p.merchant_id = ms.merchant_id
    LEFT JOIN LATERAL (
        SELECT array_agg(t.tier_id ORDER BY t.min_points, t.tier_id COLLATE "C") AS ids,
               array_agg(t.min_points::bigint ORDER BY t.min_points, t.tier_id COLLATE "C") AS mins,
               array_agg(coalesce((t.benefits->>'bonus_points')::bigint, 0)
                         ORDER BY t.min_points, t.tier_id COLLATE "C") AS bonuses
        FROM vip_tiers t WHERE t.merchant_id = ms.merchant_id
    ) l ON true
), summed AS MATERIALIZED (
    SELECT c.*, s.has_deadlines AND c.period_end IS NOT NULL AS live, s.grace_days, s.downgrade_policy,
           s.entry_bonus, s.version, s.ids, s.mins, s.bonuses,
           w.next_end,
           CASE WHEN s.has_deadlines AND c.period_end IS NOT NULL THEN coalesce((
               SELECT sum(q.points) FROM qualifying_points_daily q
               WHERE q.merchant_id = c.merchant_id AND q.customer_id = c.customer_id
                 AND q.day >= (w.end_day - make_interval(months => s.months))::date AND q.day < w.end_day), 0)
           END::bigint AS pts
    FROM claimed c JOIN setup s USING (merchant_id)
    LEFT JOIN LATERAL (
        SELECT e.end_day,
               ((e.end_day + make_interval(months => s.months))::timestamp AT TIME ZONE s.time_zone) AS next_end
        FROM (SELECT (c.period_end AT TIME ZONE s.time_zone)::date AS end_day) e
    ) w ON s.has_deadlines AND c.period_end IS NOT NULL
), ranked AS MATERIALIZED (
    SELECT x.*,
           coalesce(array_position(x.ids, x.tier_id) - 1, -1) AS cur,
           (SELECT count(*) FROM unnest(x.mins) m WHERE m <= greatest(x.pts, 0))::int - 1 AS reached,
           CASE WHEN x.floor_tier_id IS NULL OR (x.floor_until IS NOT NULL AND x.floor_until <= $6) THEN -1
                ELSE coalesce(array_position(x.ids, x.floor_tier_id) - 1, -1) END AS floor_rank
    FROM summed x
), targeted AS MATERIALIZED (
    SELECT r.*,
           greatest(CASE WHEN r.downgrade_policy = 'one_down' THEN greatest(r.reached, r.cur - 1, 0)
                         ELSE greatest(r.reached, 0) END, r.floor_rank, 0) AS down_rank
    FROM ranked r
), decided AS MATERIALIZED (
    SELECT r.*,
           CASE WHEN NOT r.live THEN NULL
                WHEN r.reached >= 0 AND r.reached > r.cur THEN r.reached
                WHEN r.cur >= 0 AND cardinality(r.ids) > 0 AND r.down_rank < r.cur THEN r.down_rank
           END AS to_rank
    FROM targeted r
), moves AS MATERIALIZED (
    SELECT d.merchant_id, d.customer_id, d.live, d.pts, d.next_end, d.grace_days, d.version,
           d.to_rank IS NOT NULL AS moving,
           d.ids[d.to_rank + 1] AS new_tier, d.tier_id AS old_tier,
           CASE WHEN d.to_rank > d.cur THEN 'up' ELSE 'down' END AS dir,
           CASE WHEN d.to_rank > d.cur THEN 'threshold_reached'
                WHEN d.grace_days > 0 THEN 'grace_expired' ELSE 'period_end' END AS reason,
           CASE WHEN d.to_rank > d.cur
                     AND NOT (d.entry_bonus = 'once_ever' AND d.ids[d.to_rank + 1] = ANY(d.held_tiers))
                THEN d.bonuses[d.to_rank + 1] ELSE 0 END AS bonus,
           CASE WHEN d.to_rank IS NOT NULL THEN
               ARRAY(SELECT DISTINCT h COLLATE "C" FROM unnest(d.held_tiers || d.ids[d.to_rank + 1]) h ORDER BY 1)
           END AS held,
           CASE WHEN d.to_rank IS NOT NULL THEN gen_random_uuid() END AS event_id,
           CASE WHEN d.to_rank IS NOT NULL THEN gen_random_uuid()::text END AS correlation_id
    FROM decided d
), written AS (
    UPDATE customer_tiers ct SET
        tier_id = CASE WHEN m.moving THEN m.new_tier ELSE ct.tier_id END,
        assigned_at = CASE WHEN m.moving THEN $6 ELSE ct.assigned_at END,
        source = CASE WHEN m.moving THEN 'scheduler' ELSE ct.source END,
        cause_event_id = CASE WHEN m.moving THEN NULL ELSE ct.cause_event_id END,
        held_tiers = CASE WHEN m.moving THEN m.held ELSE ct.held_tiers END,
        change_direction = CASE WHEN m.moving THEN m.dir ELSE ct.change_direction END,
        change_reason = CASE WHEN m.moving THEN m.reason ELSE ct.change_reason END,
        changed_by = CASE WHEN m.moving THEN '' ELSE ct.changed_by END,
        qualifying_points = CASE WHEN m.live THEN m.pts ELSE ct.qualifying_points END,
        period_end = CASE WHEN m.live THEN m.next_end ELSE ct.period_end END,
        deadline = CASE WHEN m.live THEN m.next_end + m.grace_days * interval '24 hours' END,
        program_version = CASE WHEN m.live THEN m.version ELSE ct.program_version END
    FROM moves m
    WHERE ct.merchant_id = m.merchant_id AND ct.customer_id = m.customer_id
    RETURNING ct.merchant_id
), announced AS (
    INSERT INTO outbox_events (event_id, merchant_id, topic, key, payload, headers)
    SELECT m.event_id, m.merchant_id, $7, m.merchant_id || ':' || m.customer_id,
           jsonb_build_object(
               'event_id', m.event_id, 'customer_id', m.customer_id, 'merchant_id', m.merchant_id,
               'tier_id', m.new_tier, 'assigned_at', floor(extract(epoch FROM $6::timestamptz) * 1000)::bigint,
               'correlation_id', m.correlation_id, 'cause_event_id', NULL, 'previous_tier_id', m.old_tier,
               'direction', m.dir, 'reason', m.reason, 'bonus_points', m.bonus, 'program_version', m.version),
           jsonb_build_object('correlation_id', m.correlation_id)
    FROM moves m WHERE m.moving ORDER BY m.merchant_id, m.customer_id
    RETURNING 1
)
SELECT m.dir, m.reason, count(*) AS n, NULL::uuid AS last_m, NULL::uuid AS last_c FROM moves m WHERE m.moving
GROUP BY m.dir, m.reason
UNION ALL
SELECT NULL, NULL, (SELECT count(*) FROM written) - (SELECT count(*) FROM moves WHERE moving)
       + 0 * (SELECT count(*) FROM announced), c.merchant_id, c.customer_id
FROM (SELECT merchant_id, customer_id FROM claimed ORDER BY merchant_id DESC, customer_id DESC LIMIT 1) c
"""
