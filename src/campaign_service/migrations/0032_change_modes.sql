-- Issue 14 gaps: a scheduled delete keeps the request's apply mode (NULL: none was given, so the
-- delete fails at its time if customers hold the tier, as an immediate delete without a mode
-- does); every other scheduled change always has a mode (the default upgrades_only).
ALTER TABLE tier_scheduled_changes ALTER COLUMN mode DROP NOT NULL;
ALTER TABLE tier_scheduled_changes ALTER COLUMN mode DROP DEFAULT;
ALTER TABLE tier_scheduled_changes
    ADD CONSTRAINT tier_scheduled_changes_mode_given CHECK (mode IS NOT NULL OR kind = 'tier_delete');
-- Until now the API never passed a mode into a scheduled change: a pending delete carries the
-- column's old default, not a caller's choice. It keeps the behaviour it was scheduled with.
-- (RLS is forced even for the owner: lifted for this one statement, inside this transaction.)
ALTER TABLE tier_scheduled_changes NO FORCE ROW LEVEL SECURITY;
UPDATE tier_scheduled_changes SET mode = NULL WHERE kind = 'tier_delete' AND state = 'pending';
ALTER TABLE tier_scheduled_changes FORCE ROW LEVEL SECURITY;

-- ---------------------------------------------------------------------------------------------
-- Past configurations, for reads `as_of` a past time: every configuration version of a merchant
-- (tier_config_heads, migration 0031) as it stood when its transaction committed, from when it
-- was in force (`valid_from`: the change's effective time for a scheduled change, else the
-- commit's transaction time). Small: the whole ladder (at most 100 tiers) and the programme per
-- configuration change, a handful of changes per merchant a year; kept for ever, as the history
-- rows that name a configuration version are.
--   seeded  the row this migration wrote for a merchant that had a configuration already: what
--           was in force before it is not known (reads before its valid_from are refused)
CREATE TABLE tier_config_versions (
    merchant_id  uuid NOT NULL REFERENCES merchants (id),
    version      bigint NOT NULL,
    valid_from   timestamptz(3) NOT NULL,
    tiers        jsonb NOT NULL,
    programme    jsonb,
    seeded       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (merchant_id, version)
);
CREATE INDEX idx_tier_config_versions_valid_from ON tier_config_versions (merchant_id, valid_from DESC, version DESC);

-- The head's time is the configuration's effective time: a scheduled activation sets
-- `app.effective_at` in its transaction (as vip_tiers_touch reads it).
CREATE OR REPLACE FUNCTION tier_config_bump_new() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tier_config_heads AS h (merchant_id, version, txid, updated_at)
    SELECT DISTINCT n.merchant_id, 1, txid_current(),
           coalesce(nullif(current_setting('app.effective_at', true), '')::timestamptz, now())
    FROM new_rows n
    ON CONFLICT (merchant_id) DO UPDATE
        SET version = h.version + CASE WHEN h.txid = EXCLUDED.txid THEN 0 ELSE 1 END,
            txid = EXCLUDED.txid, updated_at = EXCLUDED.updated_at;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION tier_config_bump_old() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tier_config_heads AS h (merchant_id, version, txid, updated_at)
    SELECT DISTINCT o.merchant_id, 1, txid_current(),
           coalesce(nullif(current_setting('app.effective_at', true), '')::timestamptz, now())
    FROM old_rows o
    ON CONFLICT (merchant_id) DO UPDATE
        SET version = h.version + CASE WHEN h.txid = EXCLUDED.txid THEN 0 ELSE 1 END,
            txid = EXCLUDED.txid, updated_at = EXCLUDED.updated_at;
    RETURN NULL;
END $$;

-- The configuration as it stands: the tiers (the columns of the tier reads, translations
-- included) and the programme row.
CREATE OR REPLACE FUNCTION tier_config_tiers_json(m uuid) RETURNS jsonb
    LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(to_jsonb(t) || jsonb_build_object('translations',
               coalesce((SELECT jsonb_object_agg(tr.locale, tr.name) FROM vip_tier_translations tr
                         WHERE tr.merchant_id = t.merchant_id AND tr.tier_id = t.tier_id), '{}'::jsonb))
               ORDER BY t.min_points, t.tier_id), '[]'::jsonb)
    FROM vip_tiers t WHERE t.merchant_id = m
$$;

-- At commit (a deferred constraint trigger: after the transaction's last configuration write),
-- once per version: the head's row may be written by several statements of one transaction.
CREATE OR REPLACE FUNCTION tier_config_snapshot() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tier_config_versions (merchant_id, version, valid_from, tiers, programme)
    SELECT h.merchant_id, h.version, h.updated_at, tier_config_tiers_json(h.merchant_id),
           (SELECT to_jsonb(p) FROM tier_programs p WHERE p.merchant_id = h.merchant_id)
    FROM tier_config_heads h WHERE h.merchant_id = NEW.merchant_id
    ON CONFLICT (merchant_id, version) DO NOTHING;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER trg_tier_config_snapshot AFTER INSERT OR UPDATE ON tier_config_heads
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tier_config_snapshot();

-- Merchants configured before this migration: their configuration now, from now on (seeded).
-- (RLS is forced even for the owner: lifted while reading and writing here, in this transaction.)
ALTER TABLE vip_tiers NO FORCE ROW LEVEL SECURITY;
ALTER TABLE vip_tier_translations NO FORCE ROW LEVEL SECURITY;
ALTER TABLE tier_programs NO FORCE ROW LEVEL SECURITY;
ALTER TABLE tier_config_heads NO FORCE ROW LEVEL SECURITY;
INSERT INTO tier_config_versions (merchant_id, version, valid_from, tiers, programme, seeded)
SELECT m.id, coalesce(h.version, 0), now(), tier_config_tiers_json(m.id),
       (SELECT to_jsonb(p) FROM tier_programs p WHERE p.merchant_id = m.id), true
FROM merchants m LEFT JOIN tier_config_heads h ON h.merchant_id = m.id
WHERE EXISTS (SELECT 1 FROM vip_tiers t WHERE t.merchant_id = m.id)
   OR EXISTS (SELECT 1 FROM tier_programs p WHERE p.merchant_id = m.id);
ALTER TABLE vip_tiers FORCE ROW LEVEL SECURITY;
ALTER TABLE vip_tier_translations FORCE ROW LEVEL SECURITY;
ALTER TABLE tier_programs FORCE ROW LEVEL SECURITY;
ALTER TABLE tier_config_heads FORCE ROW LEVEL SECURITY;

ALTER TABLE tier_config_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE tier_config_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tier_config_versions TO campaign_app
    USING (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text)
    WITH CHECK (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text);
GRANT SELECT, INSERT ON tier_config_versions TO campaign_app;
