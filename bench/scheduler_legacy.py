"""The scheduler's chunk statement as it was before migration 0023 (main at 97ec1b8), for the
same-run ratio of bench.scheduler --compare. Not used by the service."""

from __future__ import annotations

LEGACY_REASSESS = """
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
