"""Tier progression on PostgreSQL: transactions scoped to a SET of merchants (a consumer batch, a
scheduler chunk) and the set-based statements the engine needs.

`app.merchant_ids` holds the scope (a JSON object keyed by merchant id); every tenant policy
admits only those merchants (see migration 0020), so RLS confines each statement to the batch's
merchants and no role bypasses it.
Each method is one statement for all the customers it is given, whatever their number.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from campaign_service.adapters.postgres import reassessment
from campaign_service.adapters.postgres.errors import translated
from campaign_service.domain.events import OutboxMessage
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


_WRITE_STATES = (
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
    " change_reason = EXCLUDED.change_reason, changed_by = EXCLUDED.changed_by"
)


def _add_outbox(first: int) -> str:
    """The INSERT of outbox rows, its 6 arrays numbered from parameter $`first`."""
    p = [f"${first + i}" for i in range(6)]
    return (
        "INSERT INTO outbox_events (event_id, merchant_id, topic, key, payload, headers)"
        f" SELECT e, m, t, k, p, h FROM unnest({p[0]}::uuid[], {p[1]}::uuid[], {p[2]}::text[], {p[3]}::text[],"
        f" {p[4]}::jsonb[], {p[5]}::jsonb[]) WITH ORDINALITY AS x(e, m, t, k, p, h, n) ORDER BY n"
    )


def _outbox_columns(messages: Sequence[OutboxMessage]) -> list[list[Any]]:
    return [
        [m.event_id for m in messages],
        [m.merchant_id for m in messages],
        [m.topic for m in messages],
        [m.key for m in messages],
        [m.payload for m in messages],
        [m.headers for m in messages],
    ]


def _setup(row: Mapping[str, Any]) -> tuple[Programme, Ladder]:
    tiers = json.loads(row["tiers"])
    return programme_from_row(row), Ladder(Level(t, int(mp), int(b), bool(d)) for t, mp, b, d in tiers)


# merchant -> (the setups row it was built from, the programme and ladder built from it). Bounded;
# an entry is only reused while the row read in the current transaction is equal to its source.
SetupCache = dict[UUID, tuple[tuple[Any, ...], tuple[Programme, Ladder]]]
_SETUPS_MAX = 50_000


def _key_order(key: CustomerKey) -> tuple[int, int]:
    """Sort key equal to the tuple's own order (UUID order is the order of `.int`, as in
    PostgreSQL) without a Python-level UUID.__lt__ per comparison (~18 % of a profiled batch)."""
    return (key[0].int, key[1].int)


class PgProgressionTransaction:
    def __init__(
        self, conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any], setup_cache: SetupCache | None = None
    ) -> None:
        self._conn = conn
        self._setups: SetupCache = setup_cache if setup_cache is not None else {}

    async def setups(self, merchants: Sequence[UUID]) -> dict[UUID, tuple[Programme, Ladder]]:
        """Programme and tiers of each provisioned merchant among `merchants` (others are absent).

        Read in this transaction every time; only the Python objects are reused (the SetupCache) while
        the row reads the same: building them was ~7 % of a batch's CPU in bench.points_handler."""
        rows = await self._conn.fetch(
            f"SELECT m.id, {', '.join('p.' + c.strip() for c in _PROGRAMME_COLUMNS.split(','))},"
            " (SELECT coalesce(json_agg(json_build_array(t.tier_id, t.min_points,"
            "   coalesce((t.benefits->>'bonus_points')::bigint, 0), t.is_default) ORDER BY t.tier_id), '[]')"
            "  FROM vip_tiers t WHERE t.merchant_id = m.id)::text AS tiers"
            " FROM merchants m LEFT JOIN tier_programs p ON p.merchant_id = m.id WHERE m.id = ANY($1::uuid[])",
            list(merchants),
        )
        out: dict[UUID, tuple[Programme, Ladder]] = {}
        for r in rows:
            fingerprint = tuple(r)
            cached = self._setups.get(r["id"])
            if cached is None or cached[0] != fingerprint:
                cached = self._setups[r["id"]] = (fingerprint, _setup(r))
                if len(self._setups) > _SETUPS_MAX:
                    del self._setups[next(iter(self._setups))]  # the oldest entry
            out[r["id"]] = cached[1]
        return out

    async def record_and_lock(
        self,
        events: Sequence[tuple[UUID, UUID]],
        event_type: str,
        points: Sequence[tuple[UUID, UUID, UUID, date, int]],
        customers: Mapping[CustomerKey, tuple[date | None, date | None]],
    ) -> tuple[set[UUID], dict[CustomerKey, tuple[TierState | None, int]]]:
        """In ONE statement (a points batch's transaction is a handful of round trips, each part of
        its latency: bench.points_latency):
          - records the (event_id, merchant_id) pairs as processed (the rest are duplicates);
          - adds the (event_id, merchant, customer, local day, points) contributions of the events
            recorded now to their days' buckets;
          - locks the customers' tier rows (key order) and sums their points over [first, end)
            days (None: unbounded), this statement's additions included.
        The event ids recorded now, and each customer's state (None: no tier yet) and sum.

        The statement's snapshot does not see its own additions (every part of a statement reads
        the same snapshot), so a sum is the stored buckets' plus the fresh contributions in the
        window; a customer's buckets are written by the one consumer that holds its key."""
        if not events:
            return set(), {}
        keys = sorted(customers, key=_key_order)
        rows = await self._conn.fetch(
            "WITH fresh AS (INSERT INTO processed_events (event_id, merchant_id, event_type)"
            "  SELECT e, m, $3 FROM unnest($1::uuid[], $2::uuid[]) AS x(e, m) ORDER BY e"  # one lock order
            "  ON CONFLICT (event_id) DO NOTHING RETURNING event_id),"
            " delta AS (SELECT p.m, p.c, p.d, sum(p.n)::bigint AS n"
            "  FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::date[], $8::bigint[]) AS p(e, m, c, d, n)"
            "  JOIN fresh f ON f.event_id = p.e GROUP BY p.m, p.c, p.d HAVING sum(p.n) <> 0),"
            " added AS (INSERT INTO qualifying_points_daily AS q (merchant_id, customer_id, day, points)"
            "  SELECT m, c, d, n FROM delta ORDER BY m, c, d"  # key order: lock order
            "  ON CONFLICT (merchant_id, customer_id, day) DO UPDATE SET points = q.points + EXCLUDED.points),"
            " windows AS (SELECT * FROM unnest($9::uuid[], $10::uuid[], $11::date[], $12::date[]) AS x(m, c, f, e)),"
            " fresh_sums AS (SELECT w.m, w.c, sum(d.n)::bigint AS n FROM windows w"
            "  JOIN delta d ON d.m = w.m AND d.c = w.c AND (w.f IS NULL OR d.d >= w.f) AND (w.e IS NULL OR d.d < w.e)"
            "  GROUP BY w.m, w.c),"
            # A nested loop of key lookups (LATERAL): a join let the planner hash every row of the
            # scope's merchants. Rows are locked in the order of `keys` (sorted: one lock order).
            f" locked AS (SELECT x.m, x.c, {_STATE_COLUMNS},"
            "  (SELECT coalesce(sum(q.points), 0) FROM qualifying_points_daily q"
            "   WHERE q.merchant_id = x.m AND q.customer_id = x.c"
            "   AND (x.f IS NULL OR q.day >= x.f) AND (x.e IS NULL OR q.day < x.e))::bigint AS stored"
            "  FROM windows x LEFT JOIN LATERAL (SELECT * FROM customer_tiers t"
            "   WHERE t.merchant_id = x.m AND t.customer_id = x.c FOR UPDATE) ct ON true)"
            " SELECT NULL::uuid AS event_id, l.*, l.stored + coalesce(s.n, 0) AS points"
            " FROM locked l LEFT JOIN fresh_sums s ON s.m = l.m AND s.c = l.c"
            " UNION ALL SELECT event_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
            " FROM fresh",
            [e for e, _ in events],
            [m for _, m in events],
            event_type,
            [p[0] for p in points],
            [p[1] for p in points],
            [p[2] for p in points],
            [p[3] for p in points],
            [p[4] for p in points],
            [k[0] for k in keys],
            [k[1] for k in keys],
            [customers[k][0] for k in keys],
            [customers[k][1] for k in keys],
        )
        fresh = {r["event_id"] for r in rows if r["event_id"] is not None}
        states = {(r["m"], r["c"]): (state_from_row(r), int(r["points"])) for r in rows if r["event_id"] is None}
        return fresh, states

    async def write_states(self, writes: Sequence[StateWrite]) -> None:
        """Inserts or updates the customers' tier rows in one statement; the history triggers
        record the moves (rows whose tier did not change add no history)."""
        if not writes:
            return
        ws = sorted(writes, key=lambda w: (w.merchant_id.int, w.customer_id.int))
        await self._conn.execute(_WRITE_STATES, *_state_columns(ws))

    async def write_moves(self, writes: Sequence[StateWrite], messages: Sequence[OutboxMessage]) -> None:
        """write_states then add_outbox, in one statement when there are both (a round trip fewer
        in every points batch that moves someone: bench.points_latency)."""
        if not writes or not messages:
            await self.write_states(writes)
            await self.add_outbox(messages)
            return
        ws = sorted(writes, key=lambda w: (w.merchant_id.int, w.customer_id.int))
        await self._conn.execute(
            f"WITH states AS ({_WRITE_STATES}) {_add_outbox(15)}", *_state_columns(ws), *_outbox_columns(messages)
        )

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> None:
        if not messages:
            return
        await self._conn.execute(_add_outbox(1), *_outbox_columns(messages))

    async def reassess_due(
        self, merchants: Sequence[UUID], at: datetime, stamp: datetime, limit: int, after: CustomerKey | None
    ) -> tuple[int, CustomerKey | None, list[tuple[str, str, int]]]:
        """The scheduler's chunk in ONE statement (adapters.postgres.reassessment.reassess_due)."""
        return await reassessment.reassess_due(self._conn, merchants, at, stamp, limit, after)




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
        self._setups: SetupCache = {}

    async def due_merchants(self, at: datetime, limit: int) -> list[tuple[UUID, int]]:
        """Merchants with customers due at `at` and how many, earliest deadline first: the only
        cross-merchant read, ids and counts only (SECURITY DEFINER function, migration 0020)."""
        async with translated():
            rows = await self._pool.fetch("SELECT merchant_id, due FROM campaign_due_merchants($1, $2)", at, limit)
        return [(r["merchant_id"], int(r["due"])) for r in rows]

    @asynccontextmanager
    async def __call__(self, merchants: Sequence[UUID]) -> AsyncIterator[PgProgressionTransaction]:
        async with (
            translated(),  # acquiring (pool exhausted, server down)
            self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
            translated(conn),  # the transaction, while we hold the connection to ask about it
        ):
            # BEGIN and the scope in one round trip (a simple query of two statements; the scope
            # is a literal of canonical UUIDs, see _scope), where asyncpg's transaction() and a
            # parameterised set_config are two: a points batch is a handful of round trips, each
            # of them part of its latency (bench.points_latency).
            # jit off: a batch's statements are short, and compiling them cost more than running them.
            try:
                await conn.execute(
                    "BEGIN; SELECT set_config('app.merchant_ids', '" + _scope(merchants) + "', true),"
                    " set_config('jit', 'off', true)"
                )
                yield PgProgressionTransaction(conn, self._setups)
            except BaseException:
                if conn.is_in_transaction():
                    # The error that ended the transaction is the one to raise; a connection that
                    # cannot roll back is broken, and the pool drops it.
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")


def _scope(merchants: Sequence[UUID]) -> str:
    """The `app.merchant_ids` scope (migration 0020) as the text of a JSON object keyed by the
    merchants' canonical UUID texts: hex digits and hyphens only, so it is safe inside quotes."""
    ids = sorted({m if isinstance(m, UUID) else UUID(str(m)) for m in merchants})
    return json.dumps(dict.fromkeys(map(str, ids), True))
