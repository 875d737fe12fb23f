-- Tier progression (issue 13): a programme per merchant, qualifying points per customer per day,
-- the customer's tier state with its deadline, and a history row for every move.
-- (Numbered after the issue, so concurrent branches' migrations cannot clash.)

-- ---------------------------------------------------------------------------------------------
-- Scope of a transaction: one merchant (app.merchant_id, the API) or a SET of merchants
-- (app.merchant_ids = a JSON object whose keys are the merchant UUIDs, for a consumer batch or
-- a scheduler chunk). Every tenant policy admits a row when its merchant is the one merchant or
-- a key of the set. No role bypasses RLS, and a transaction with app.merchant_id = A sees exactly
-- what it saw before.
--
-- Why this shape (measured on a 1,000-merchant database, a 900-row INSERT of one batch over 266
-- merchants, on this 2-core machine under load): `merchant_id = ANY(set::uuid[])` re-cast the
-- array for every row and every index probe re-sorted it (~160 ms for the INSERT, ~0.5 s for
-- 1,000 key lookups); a substring test of the UUID in the set's text was linear in the set
-- (~50 us per row with 600 merchants). A jsonb object read once per statement (the scalar
-- subquery becomes an InitPlan, evaluated once even in WITH CHECK) answers `?` by binary search:
-- ~32 ms for the same INSERT, most of it the foreign-key checks. Malformed JSON is an error, and
-- anything else that is not a key matches nothing: never a wildcard.
CREATE OR REPLACE FUNCTION campaign_scope() RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.merchant_ids', true), '')::jsonb $$;

-- The set as an array (for a statement's own index condition, e.g. the scheduler's claim).
CREATE OR REPLACE FUNCTION campaign_current_merchants() RETURNS uuid[]
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT ARRAY(SELECT k::uuid FROM jsonb_object_keys(campaign_scope()) AS k) $$;
GRANT EXECUTE ON FUNCTION campaign_scope(), campaign_current_merchants() TO campaign_app;

-- ---------------------------------------------------------------------------------------------
-- The programme: how customers qualify and when they are re-assessed. No row = the defaults
-- (lifetime window, never downgrade): the behaviour before this feature. Small (one row per
-- merchant), so not partitioned.
CREATE TABLE tier_programs (
    merchant_id              uuid PRIMARY KEY REFERENCES merchants (id),
    window_kind              text NOT NULL DEFAULT 'lifetime'
                             CHECK (window_kind IN ('lifetime', 'calendar_year', 'rolling_months')),
    time_zone                text NOT NULL DEFAULT 'UTC' CHECK (char_length(time_zone) BETWEEN 1 AND 64),
    window_months            integer CHECK (window_months BETWEEN 1 AND 36),
    downgrade_policy         text NOT NULL DEFAULT 'never'
                             CHECK (downgrade_policy IN ('never', 'to_qualified', 'one_down')),
    grace_days               integer NOT NULL DEFAULT 0 CHECK (grace_days BETWEEN 0 AND 365),
    reversal_downgrades_now  boolean NOT NULL DEFAULT false,
    entry_bonus              text NOT NULL DEFAULT 'once_ever' CHECK (entry_bonus IN ('once_ever', 'every_promotion')),
    downgrade_warning_days   integer NOT NULL DEFAULT 0 CHECK (downgrade_warning_days BETWEEN 0 AND 365),
    version                  bigint NOT NULL DEFAULT 1,
    updated_at               timestamptz(3) NOT NULL DEFAULT now(),
    CHECK ((window_kind = 'rolling_months') = (window_months IS NOT NULL))
);

-- ---------------------------------------------------------------------------------------------
-- Qualifying points per customer per LOCAL day (in the programme's time zone when the points
-- were recorded): a window sum reads at most one row per active day of the window, never the
-- ledger. Redeem/expire never reach this table with a negative amount; reversals do.
CREATE TABLE qualifying_points_daily (
    merchant_id  uuid NOT NULL,
    customer_id  uuid NOT NULL,
    day          date NOT NULL,
    points       bigint NOT NULL,
    PRIMARY KEY (merchant_id, customer_id, day)
) PARTITION BY HASH (merchant_id);

DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format(
            'CREATE TABLE qualifying_points_daily_p%s PARTITION OF qualifying_points_daily'
            ' FOR VALUES WITH (MODULUS 16, REMAINDER %s)', i, i);
    END LOOP;
END $$;

-- ---------------------------------------------------------------------------------------------
-- The customer's tier state lives on customer_tiers (one row per customer, as before):
--   assigned_at        since when the customer holds tier_id
--   qualifying_points  the window sum at the last evaluation
--   period_end         end of the qualification period the tier is held for (NULL: lifetime)
--   deadline           period_end + grace: when the scheduler re-assesses (NULL: never due)
--   floor_tier_id/until  a manual floor: no downgrade below it until `until` (NULL: for ever)
--   held_tiers         every tier the customer ever held (entry bonus once_ever)
--   program_version    the programme version of the last evaluation
--   change_*           why the last move happened; the history trigger copies them
ALTER TABLE customer_tiers
    ADD COLUMN qualifying_points bigint NOT NULL DEFAULT 0,
    ADD COLUMN period_end timestamptz(3),
    ADD COLUMN deadline timestamptz(3),
    ADD COLUMN floor_tier_id text,
    ADD COLUMN floor_until timestamptz(3),
    ADD COLUMN held_tiers text[] NOT NULL DEFAULT '{}',
    ADD COLUMN program_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN change_direction text NOT NULL DEFAULT 'initial'
        CHECK (change_direction IN ('initial', 'up', 'down', 'manual')),
    ADD COLUMN change_reason text NOT NULL DEFAULT 'default'
        CHECK (change_reason IN ('default', 'threshold_reached', 'period_end', 'grace_expired', 'reversal',
                                 'manual', 'program_change')),
    ADD COLUMN changed_by text NOT NULL DEFAULT '';
ALTER TABLE customer_tiers DROP CONSTRAINT customer_tiers_source_check;
ALTER TABLE customer_tiers ADD CONSTRAINT customer_tiers_source_check
    CHECK (source IN ('customer.created', 'manual', 'points.recorded', 'scheduler', 'program'));

-- The scheduler's claim: due customers in deadline order (per partition, merged), and per
-- merchant set in key order.
CREATE INDEX idx_customer_tiers_deadline ON customer_tiers (deadline, merchant_id, customer_id)
    WHERE deadline IS NOT NULL;
CREATE INDEX idx_customer_tiers_due ON customer_tiers (merchant_id, customer_id, deadline) WHERE deadline IS NOT NULL;

ALTER TABLE customer_tier_history
    ADD COLUMN from_tier_id text,
    ADD COLUMN direction text NOT NULL DEFAULT 'initial',
    ADD COLUMN reason text NOT NULL DEFAULT 'default',
    ADD COLUMN program_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN qualifying_points bigint NOT NULL DEFAULT 0,
    ADD COLUMN actor text NOT NULL DEFAULT '';

-- History is written for every writer by statement-level triggers with transition tables: one
-- INSERT ... SELECT per statement instead of a PL/pgSQL call per row (a scheduler chunk moves
-- thousands of customers at once). A row whose tier did not change (points only) writes nothing.
DROP TRIGGER trg_customer_tier_history ON customer_tiers;
DROP FUNCTION customer_tiers_record_history();

CREATE OR REPLACE FUNCTION customer_tiers_history_on_insert() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_tier_history (merchant_id, customer_id, tier_id, assigned_at, source, cause_event_id,
                                       from_tier_id, direction, reason, program_version, qualifying_points, actor)
    SELECT n.merchant_id, n.customer_id, n.tier_id, n.assigned_at, n.source, n.cause_event_id,
           NULL, n.change_direction, n.change_reason, n.program_version, n.qualifying_points, n.changed_by
    FROM new_rows n;
    RETURN NULL;
END $$;

-- Transition tables have no statistics, so the join of OLD and NEW is forced to a hash join (linear
-- in the statement's rows). A precaution: in bench.scheduler the per-row foreign-key checks of
-- customer_tiers -> vip_tiers, not this join, dominated the cost of a chunk's UPDATE.
CREATE OR REPLACE FUNCTION customer_tiers_history_on_update() RETURNS trigger
    LANGUAGE plpgsql SET enable_nestloop = off AS $$
BEGIN
    INSERT INTO customer_tier_history (merchant_id, customer_id, tier_id, assigned_at, source, cause_event_id,
                                       from_tier_id, direction, reason, program_version, qualifying_points, actor)
    SELECT n.merchant_id, n.customer_id, n.tier_id, n.assigned_at, n.source, n.cause_event_id,
           o.tier_id, n.change_direction, n.change_reason, n.program_version, n.qualifying_points, n.changed_by
    FROM new_rows n JOIN old_rows o USING (merchant_id, customer_id)
    WHERE n.tier_id IS DISTINCT FROM o.tier_id;
    RETURN NULL;
END $$;

CREATE TRIGGER trg_customer_tier_history_insert AFTER INSERT ON customer_tiers
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION customer_tiers_history_on_insert();
CREATE TRIGGER trg_customer_tier_history_update AFTER UPDATE ON customer_tiers
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION customer_tiers_history_on_update();

-- Consumed event types that are deduplicated.
ALTER TABLE processed_events DROP CONSTRAINT processed_events_event_type_check;
ALTER TABLE processed_events ADD CONSTRAINT processed_events_event_type_check
    CHECK (event_type IN ('customer.created', 'points.recorded', 'customer.deleted',
                          'vip_tier.assigned', 'vip_tier.updated'));

-- ---------------------------------------------------------------------------------------------
-- Row-Level Security: the tenant policy of every tenant table now compares with the scope's set.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tier_programs', 'qualifying_points_daily'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['vip_tiers', 'vip_tier_translations', 'customer_tiers', 'customer_tier_history',
                             'processed_events', 'outbox_events'] LOOP
        EXECUTE format('DROP POLICY tenant_isolation ON %I', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['vip_tiers', 'vip_tier_translations', 'customer_tiers', 'customer_tier_history',
                             'processed_events', 'outbox_events', 'tier_programs', 'qualifying_points_daily'] LOOP
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO campaign_app '
            'USING (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text) '
            'WITH CHECK (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text)', t);
    END LOOP;
END $$;

DROP POLICY tenant_isolation ON merchants;
CREATE POLICY tenant_isolation ON merchants FOR SELECT TO campaign_app
    USING (id = campaign_current_merchant() OR (SELECT campaign_scope()) ? id::text);

GRANT SELECT, INSERT, UPDATE, DELETE ON tier_programs, qualifying_points_daily TO campaign_app;

-- ---------------------------------------------------------------------------------------------
-- Which merchants have customers due at `now`: the scheduler's only cross-merchant read. Like
-- campaign_tier_counts it runs as the owner and returns merchant ids only, never customer data;
-- the claim and the re-assessment then run as the service role in a transaction scoped to those
-- merchants (RLS applies). The owner's read policy is switched on only inside the function.
CREATE POLICY due_merchants ON customer_tiers FOR SELECT TO campaign_owner
    USING (current_setting('campaign.due_merchants', true) = 'on');

CREATE OR REPLACE FUNCTION campaign_due_merchants(at timestamptz, max_merchants integer)
    RETURNS TABLE (merchant_id uuid, due bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    PERFORM set_config('campaign.due_merchants', 'on', true);
    RETURN QUERY
        SELECT c.merchant_id, count(*)::bigint FROM public.customer_tiers c
        WHERE c.deadline <= at
        GROUP BY c.merchant_id
        ORDER BY min(c.deadline), c.merchant_id
        LIMIT least(greatest(max_merchants, 1), 100000);
    PERFORM set_config('campaign.due_merchants', 'off', true);
END $$;

REVOKE ALL ON FUNCTION campaign_due_merchants(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION campaign_due_merchants(timestamptz, integer) TO campaign_app;
