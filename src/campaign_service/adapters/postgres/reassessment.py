"""Re-assessment at a deadline, set-based: the rules of domain.progression.at_deadline in SQL.

A statement is composed of three parts, each a list of CTEs:

  CLAIM_DUE   `claimed`: up to $2 due customers (deadline <= $1) of the merchants $3..$5 in key
              order after ($3, $4), FOR UPDATE SKIP LOCKED (the scheduler's claim).
  EVALUATE    from `claimed` to `moves`: per customer, the window sum of the period that ended,
              the tier the programme's policy and ladder give, whether it moves, direction,
              reason, entry bonus, held tiers, the next period. Reads only `claimed` and the
              merchants' programme, tiers and qualifying points; `$STAMP` (see evaluation()) is
              the move's timestamp, which also decides whether a floor has expired.
  WRITE       applies `moves`: the customers' rows (history from the table's triggers) and one
              `vip_tier.assigned` outbox row per move ($6 stamp, $7 topic), then the summary rows.

EVALUATE works for ANY chunk of customers, not only due ones: a statement that defines its own
`claimed` CTE with the columns

    merchant_id, customer_id, tier_id, period_end, floor_tier_id, floor_until, held_tiers,
    program_version

(one row per customer; period_end = the end of the period to assess; the window is the
programme's months of local days before it) can put `evaluation(stamp_param)` after it and read
`moves` (see evaluate_chunk, a read-only keyset chunk of every customer with a tier, for a
preview; a job that applies would claim its chunk FOR UPDATE, then EVALUATE, then its own write).
Every statement runs in a transaction scoped to the merchants (app.merchant_ids): RLS applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from campaign_service.domain.events import VIP_TIER_ASSIGNED
from campaign_service.service.progression_ports import CustomerKey

# domain.progression.at_deadline, set-based (keep the two in step; tests/integration/
# test_deadline_scheduler.py runs this one). $1 at, $2 limit, $3/$4 keyset start, $5 last merchant
# of the group, $6 the move's timestamp (ms), $7 the topic. The ladder of each merchant as arrays
# in rank order (min_points, tier_id in code-point order, as Ladder); ranks are 0-based.
CLAIM_DUE = """
WITH claimed AS MATERIALIZED (
    SELECT ct.merchant_id, ct.customer_id, ct.tier_id, ct.period_end, ct.floor_tier_id, ct.floor_until,
           ct.held_tiers, ct.program_version
    FROM customer_tiers ct
    WHERE ct.merchant_id BETWEEN $3 AND $5 AND ct.deadline <= $1 AND (ct.merchant_id, ct.customer_id) > ($3, $4)
    ORDER BY ct.merchant_id, ct.customer_id LIMIT $2 FOR UPDATE OF ct SKIP LOCKED
)"""

EVALUATE = """, ms AS MATERIALIZED (
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
           CASE WHEN x.floor_tier_id IS NULL OR (x.floor_until IS NOT NULL AND x.floor_until <= $STAMP) THEN -1
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
)"""

WRITE = """, written AS (
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


def evaluation(stamp_param: str) -> str:
    """EVALUATE with the move's timestamp as `stamp_param` (e.g. "$6"): CTEs from `claimed` to `moves`."""
    return EVALUATE.replace("$STAMP", stamp_param)


_REASSESS = CLAIM_DUE + evaluation("$6") + WRITE


async def reassess_due(
    conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any],
    merchants: Sequence[UUID],
    at: datetime,
    stamp: datetime,
    limit: int,
    after: CustomerKey | None,
) -> tuple[int, CustomerKey | None, list[tuple[str, str, int]]]:
    """The scheduler's chunk in ONE statement: claims up to `limit` due customers of
    `merchants` (FOR UPDATE SKIP LOCKED, key order after `after`), applies
    domain.progression.at_deadline to each in SQL (the same rules set-based), writes the moves
    (history from the table's triggers), their `vip_tier.assigned` outbox rows and the kept
    customers' next period.
    (claimed, last claimed key, [(direction, reason, moves)])."""
    first, last = min(merchants), max(merchants)
    after_m, after_c = after if after is not None else (first, UUID(int=0))
    rows = await conn.fetch(_REASSESS, at, limit, after_m, after_c, last, stamp, VIP_TIER_ASSIGNED)
    claimed = sum(int(r["n"]) for r in rows)
    if not claimed:
        return 0, None, []
    last_key = next((r["last_m"], r["last_c"]) for r in rows if r["last_m"] is not None)
    moves = [(r["dir"], r["reason"], int(r["n"])) for r in rows if r["dir"] is not None]
    return claimed, last_key, moves


@dataclass(frozen=True)
class Decision:
    """What EVALUATE decided for one customer: to_tier is None when the customer stays."""

    merchant_id: UUID
    customer_id: UUID
    from_tier: str
    to_tier: str | None
    direction: str | None
    reason: str | None
    qualifying_points: int | None
    bonus_points: int


# A keyset chunk of every customer with a tier of the merchants $2..$3 after ($2, $4), whatever
# their deadline, without locks (a preview): $1 stamp, $5 limit.
_CLAIM_CHUNK = """
WITH claimed AS MATERIALIZED (
    SELECT ct.merchant_id, ct.customer_id, ct.tier_id, ct.period_end, ct.floor_tier_id, ct.floor_until,
           ct.held_tiers, ct.program_version
    FROM customer_tiers ct
    WHERE ct.merchant_id BETWEEN $2 AND $3 AND (ct.merchant_id, ct.customer_id) > ($2, $4)
    ORDER BY ct.merchant_id, ct.customer_id LIMIT $5
)"""

_DECISIONS = """
SELECT m.merchant_id, m.customer_id, m.old_tier, m.moving, m.new_tier, m.dir, m.reason, m.pts, m.bonus
FROM moves m ORDER BY m.merchant_id, m.customer_id
"""

_EVALUATE_CHUNK = _CLAIM_CHUNK + evaluation("$1") + _DECISIONS


async def evaluate_chunk(
    conn: asyncpg.Connection[Any] | PoolConnectionProxy[Any],
    merchants: Sequence[UUID],
    stamp: datetime,
    limit: int,
    after: CustomerKey | None,
) -> list[Decision]:
    """EVALUATE over the next `limit` customers (key order after `after`) of `merchants`, due or
    not, writing and locking nothing: per customer, the tier the programme's policy gives on the
    points of its current period (those recorded so far) if that period ended now, and why.
    The last Decision's key continues the keyset; fewer than `limit` Decisions: the end."""
    first, last = min(merchants), max(merchants)
    after_m, after_c = after if after is not None else (first, UUID(int=0))
    rows = await conn.fetch(_EVALUATE_CHUNK, stamp, after_m, last, after_c, limit)
    return [
        Decision(
            merchant_id=r["merchant_id"],
            customer_id=r["customer_id"],
            from_tier=r["old_tier"],
            to_tier=r["new_tier"] if r["moving"] else None,
            direction=r["dir"] if r["moving"] else None,
            reason=r["reason"] if r["moving"] else None,
            qualifying_points=None if r["pts"] is None else int(r["pts"]),
            bonus_points=int(r["bonus"] or 0),
        )
        for r in rows
    ]
