-- Scheduled (effective-dated) configuration changes (issue 14 items 3 and 5), and the merchant's
-- configuration version that every customer move records.

-- ---------------------------------------------------------------------------------------------
-- A tier edit (create/update/delete) or a programme edit that takes effect at `effective_at`.
-- `pending` until the activator applies it (`applied`, with the configuration version it made),
-- or it is cancelled before its time (`cancelled`), or it no longer fits the configuration when
-- its time comes (`failed`, with the reason; nothing of it applied). Small: a handful of rows
-- per merchant, so not partitioned.
--   target   the tier id, or '_program' for the programme (tier ids cannot start with '_')
--   payload  the edit as the write RPC carries it: {"spec": ..., "mask": [...], "id": ...}
--            for a tier, {"program": ..., "mask": [...]} for the programme
CREATE TABLE tier_scheduled_changes (
    merchant_id     uuid NOT NULL REFERENCES merchants (id),
    change_id       uuid NOT NULL,
    target          text NOT NULL CHECK (target = '_program' OR target ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    kind            text NOT NULL CHECK (kind IN ('tier_create', 'tier_update', 'tier_delete', 'program_update')),
    payload         jsonb NOT NULL,
    mode            text NOT NULL DEFAULT 'upgrades_only' CHECK (mode IN ('upgrades_only', 'full', 'next_period')),
    effective_at    timestamptz(3) NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'applied', 'cancelled', 'failed')),
    config_version  bigint,
    created_at      timestamptz(3) NOT NULL DEFAULT now(),
    created_by      text NOT NULL DEFAULT '',
    finished_at     timestamptz(3),
    finished_by     text,
    error           text CHECK (char_length(error) <= 500),
    PRIMARY KEY (merchant_id, change_id),
    CHECK ((kind = 'program_update') = (target = '_program')),
    CHECK ((state = 'applied') = (config_version IS NOT NULL))
);
-- At most one pending change per tier (and one for the programme): a second one collides.
CREATE UNIQUE INDEX unique_tier_scheduled_changes_pending ON tier_scheduled_changes (merchant_id, target)
    WHERE state = 'pending';
-- The activator's claim (per merchant, in time order) and the cross-merchant due read.
CREATE INDEX idx_tier_scheduled_changes_due ON tier_scheduled_changes (effective_at, merchant_id)
    WHERE state = 'pending';
CREATE INDEX idx_tier_scheduled_changes_merchant ON tier_scheduled_changes (merchant_id, effective_at);

-- ---------------------------------------------------------------------------------------------
-- The configuration version of each merchant: moves on once per transaction that writes its
-- tiers or its programme, whoever writes (API, scheduled activation, a future writer), by
-- statement-level triggers. No row = version 0 (nothing changed since this migration).
CREATE TABLE tier_config_heads (
    merchant_id  uuid PRIMARY KEY REFERENCES merchants (id),
    version      bigint NOT NULL CHECK (version > 0),
    txid         bigint NOT NULL,
    updated_at   timestamptz(3) NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION tier_config_bump_new() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tier_config_heads AS h (merchant_id, version, txid, updated_at)
    SELECT DISTINCT n.merchant_id, 1, txid_current(), now() FROM new_rows n
    ON CONFLICT (merchant_id) DO UPDATE
        SET version = h.version + CASE WHEN h.txid = EXCLUDED.txid THEN 0 ELSE 1 END,
            txid = EXCLUDED.txid, updated_at = EXCLUDED.updated_at;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tier_config_bump_old() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tier_config_heads AS h (merchant_id, version, txid, updated_at)
    SELECT DISTINCT o.merchant_id, 1, txid_current(), now() FROM old_rows o
    ON CONFLICT (merchant_id) DO UPDATE
        SET version = h.version + CASE WHEN h.txid = EXCLUDED.txid THEN 0 ELSE 1 END,
            txid = EXCLUDED.txid, updated_at = EXCLUDED.updated_at;
    RETURN NULL;
END $$;

CREATE TRIGGER trg_tier_config_insert AFTER INSERT ON vip_tiers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tier_config_bump_new();
CREATE TRIGGER trg_tier_config_update AFTER UPDATE ON vip_tiers
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tier_config_bump_new();
CREATE TRIGGER trg_tier_config_delete AFTER DELETE ON vip_tiers
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tier_config_bump_old();
CREATE TRIGGER trg_tier_config_program_insert AFTER INSERT ON tier_programs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tier_config_bump_new();
CREATE TRIGGER trg_tier_config_program_update AFTER UPDATE ON tier_programs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tier_config_bump_new();

-- Every move records the configuration version in force when it was written (a re-assessment
-- job may name the version that caused it itself). A row trigger: the history is written by
-- statement triggers of customer_tiers as INSERT ... SELECT, where no default can see the row's
-- merchant; one primary-key probe of a table of one row per merchant.
ALTER TABLE customer_tier_history ADD COLUMN config_version bigint;

CREATE OR REPLACE FUNCTION customer_tier_history_config_version() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.config_version IS NULL THEN
        NEW.config_version := coalesce(
            (SELECT h.version FROM tier_config_heads h WHERE h.merchant_id = NEW.merchant_id), 0);
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER trg_customer_tier_history_config_version BEFORE INSERT ON customer_tier_history
    FOR EACH ROW EXECUTE FUNCTION customer_tier_history_config_version();

-- A scheduled change takes effect at its time, not when the activator got to it: the activation
-- sets `app.effective_at` in its transaction and the touched tiers' updated_at say that time.
CREATE OR REPLACE FUNCTION vip_tiers_touch() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := coalesce(nullif(current_setting('app.effective_at', true), '')::timestamptz, now());
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Row-Level Security, forced, as on every tenant table.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tier_scheduled_changes', 'tier_config_heads'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO campaign_app '
            'USING (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text) '
            'WITH CHECK (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text)', t);
    END LOOP;
END $$;

GRANT SELECT, INSERT, UPDATE ON tier_scheduled_changes TO campaign_app;
GRANT SELECT, INSERT, UPDATE ON tier_config_heads TO campaign_app;

-- ---------------------------------------------------------------------------------------------
-- The activator's only cross-merchant reads (owner functions, like campaign_due_merchants):
-- which merchants have a pending change due at `at` (ids only), and when the next one is due.
CREATE POLICY due_config_changes ON tier_scheduled_changes FOR SELECT TO campaign_owner
    USING (current_setting('campaign.due_config_changes', true) = 'on');

CREATE OR REPLACE FUNCTION campaign_due_config_changes(at timestamptz, max_merchants integer)
    RETURNS TABLE (merchant_id uuid)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    PERFORM set_config('campaign.due_config_changes', 'on', true);
    RETURN QUERY
        SELECT c.merchant_id FROM public.tier_scheduled_changes c
        WHERE c.state = 'pending' AND c.effective_at <= at
        GROUP BY c.merchant_id
        ORDER BY min(c.effective_at), c.merchant_id
        LIMIT least(greatest(max_merchants, 1), 100000);
    PERFORM set_config('campaign.due_config_changes', 'off', true);
END $$;

CREATE OR REPLACE FUNCTION campaign_next_config_change()
    RETURNS timestamptz
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    due_at timestamptz;
BEGIN
    PERFORM set_config('campaign.due_config_changes', 'on', true);
    SELECT min(c.effective_at) INTO due_at FROM public.tier_scheduled_changes c WHERE c.state = 'pending';
    PERFORM set_config('campaign.due_config_changes', 'off', true);
    RETURN due_at;
END $$;

REVOKE ALL ON FUNCTION campaign_due_config_changes(timestamptz, integer), campaign_next_config_change() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION campaign_due_config_changes(timestamptz, integer), campaign_next_config_change()
    TO campaign_app;
