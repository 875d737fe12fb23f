-- Schema of the Campaign Service. Runs as the owner role; the service role `campaign_app`
-- (created beforehand by the DBA or `campaign-service db-init`) gets only the privileges below.
-- Tenant tables have Row-Level Security ENABLED and FORCED: every statement of the service
-- sees only rows whose merchant_id equals current_setting('app.merchant_id').


-- The allow-list of locales; domain/locales.py holds the same list.
CREATE OR REPLACE FUNCTION campaign_locale_supported(tag text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT tag = ANY (ARRAY['en', 'ar', 'he']) $$;

-- The merchant the current transaction acts for (NULL when none is set).
CREATE OR REPLACE FUNCTION campaign_current_merchant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('app.merchant_id', true), '')::uuid $$;

CREATE TABLE merchants (
    id          uuid PRIMARY KEY,
    created_at  timestamptz(3) NOT NULL DEFAULT now()
);

CREATE TABLE vip_tiers (
    id                   uuid NOT NULL DEFAULT gen_random_uuid(),
    merchant_id          uuid NOT NULL REFERENCES merchants (id),
    tier_id              text NOT NULL CHECK (tier_id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    name                 text NOT NULL CHECK (btrim(name) <> '' AND char_length(name) <= 100),
    locale               text NOT NULL DEFAULT 'en' CHECK (campaign_locale_supported(locale)),
    min_points           integer NOT NULL CHECK (min_points >= 0),
    discount_percentage  integer NOT NULL DEFAULT 0
                         CHECK (discount_percentage >= 0 AND discount_percentage <= 100),
    free_shipping        boolean NOT NULL DEFAULT false,
    exclusive_access     boolean NOT NULL DEFAULT false,
    benefits             jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_default           boolean NOT NULL DEFAULT false,
    version              bigint NOT NULL DEFAULT 1,
    created_at           timestamptz(3) NOT NULL DEFAULT now(),
    updated_at           timestamptz(3) NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, id),
    CONSTRAINT unique_vip_tiers_merchant_id_tier_id UNIQUE (merchant_id, tier_id)
) PARTITION BY HASH (merchant_id);

DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format(
            'CREATE TABLE vip_tiers_p%s PARTITION OF vip_tiers FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
            i, i);
    END LOOP;
END $$;

CREATE INDEX idx_vip_tiers_merchant_id ON vip_tiers (merchant_id);
CREATE INDEX idx_vip_tiers_min_points ON vip_tiers (merchant_id, min_points);
CREATE INDEX idx_vip_tiers_benefits ON vip_tiers USING gin (benefits);
-- At most one default tier per merchant.
CREATE UNIQUE INDEX unique_vip_tiers_default ON vip_tiers (merchant_id) WHERE is_default;

-- updated_at and version move on every change, whoever writes.
CREATE OR REPLACE FUNCTION vip_tiers_touch() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;

CREATE TRIGGER trg_updated_at BEFORE UPDATE ON vip_tiers
    FOR EACH ROW EXECUTE FUNCTION vip_tiers_touch();

-- The benefits schema, enforced for every writer:
-- {"bonus_points": int 0..1e9, "custom_perks": [{"code": "a-z0-9_", "label": {locale: text}}]}
-- no other keys, at most 50 perks, at most 16 KiB.
CREATE OR REPLACE FUNCTION validate_benefits(b jsonb) RETURNS void
    LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    perk jsonb;
    label_key text;
    label_value jsonb;
    codes text[] := '{}';
BEGIN
    IF b IS NULL OR jsonb_typeof(b) <> 'object' THEN
        RAISE EXCEPTION 'benefits: must be a JSON object' USING ERRCODE = 'check_violation';
    END IF;
    IF octet_length(b::text) > 16384 THEN
        RAISE EXCEPTION 'benefits: larger than 16384 bytes' USING ERRCODE = 'check_violation';
    END IF;
    FOR k IN SELECT jsonb_object_keys(b) LOOP
        IF k NOT IN ('bonus_points', 'custom_perks') THEN
            RAISE EXCEPTION 'benefits: unknown key %', left(k, 32) USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF b ? 'bonus_points' AND (
        jsonb_typeof(b -> 'bonus_points') <> 'number'
        OR (b ->> 'bonus_points')::numeric <> trunc((b ->> 'bonus_points')::numeric)
        OR (b ->> 'bonus_points')::numeric < 0
        OR (b ->> 'bonus_points')::numeric > 1000000000) THEN
        RAISE EXCEPTION 'benefits.bonus_points: must be an integer 0..1000000000'
            USING ERRCODE = 'check_violation';
    END IF;
    IF b ? 'custom_perks' THEN
        IF jsonb_typeof(b -> 'custom_perks') <> 'array' THEN
            RAISE EXCEPTION 'benefits.custom_perks: must be an array' USING ERRCODE = 'check_violation';
        END IF;
        IF jsonb_array_length(b -> 'custom_perks') > 50 THEN
            RAISE EXCEPTION 'benefits.custom_perks: at most 50 perks' USING ERRCODE = 'check_violation';
        END IF;
        FOR perk IN SELECT jsonb_array_elements(b -> 'custom_perks') LOOP
            IF jsonb_typeof(perk) <> 'object'
               OR (SELECT count(*) FROM jsonb_object_keys(perk)) <> 2
               OR NOT (perk ? 'code' AND perk ? 'label') THEN
                RAISE EXCEPTION 'benefits.custom_perks: each perk is {"code", "label"}'
                    USING ERRCODE = 'check_violation';
            END IF;
            IF jsonb_typeof(perk -> 'code') <> 'string' OR NOT (perk ->> 'code') ~ '^[a-z0-9_]{1,64}$' THEN
                RAISE EXCEPTION 'benefits.custom_perks.code: must match [a-z0-9_]{1,64}'
                    USING ERRCODE = 'check_violation';
            END IF;
            IF (perk ->> 'code') = ANY (codes) THEN
                RAISE EXCEPTION 'benefits.custom_perks.code: duplicate code' USING ERRCODE = 'check_violation';
            END IF;
            codes := codes || (perk ->> 'code');
            IF jsonb_typeof(perk -> 'label') <> 'object' OR perk -> 'label' = '{}'::jsonb THEN
                RAISE EXCEPTION 'benefits.custom_perks.label: must be a non-empty object'
                    USING ERRCODE = 'check_violation';
            END IF;
            FOR label_key, label_value IN SELECT * FROM jsonb_each(perk -> 'label') LOOP
                IF NOT campaign_locale_supported(label_key)
                   OR jsonb_typeof(label_value) <> 'string'
                   OR btrim(label_value #>> '{}') = ''
                   OR char_length(label_value #>> '{}') > 200 THEN
                    RAISE EXCEPTION 'benefits.custom_perks.label: supported locale -> text of 1..200 characters'
                        USING ERRCODE = 'check_violation';
                END IF;
            END LOOP;
        END LOOP;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION vip_tiers_validate_benefits() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM validate_benefits(NEW.benefits);
    RETURN NEW;
END $$;

CREATE TRIGGER trg_validate_benefits BEFORE INSERT OR UPDATE OF benefits ON vip_tiers
    FOR EACH ROW EXECUTE FUNCTION vip_tiers_validate_benefits();

-- Names of a tier in locales other than its default one.
CREATE TABLE vip_tier_translations (
    merchant_id  uuid NOT NULL,
    tier_id      text NOT NULL,
    locale       text NOT NULL CHECK (campaign_locale_supported(locale)),
    name         text NOT NULL CHECK (btrim(name) <> '' AND char_length(name) <= 100),
    PRIMARY KEY (merchant_id, tier_id, locale),
    FOREIGN KEY (merchant_id, tier_id) REFERENCES vip_tiers (merchant_id, tier_id) ON DELETE CASCADE
);

-- The tier each customer holds now (ids only, no PII).
CREATE TABLE customer_tiers (
    merchant_id     uuid NOT NULL REFERENCES merchants (id),
    customer_id     uuid NOT NULL,
    tier_id         text NOT NULL,
    assigned_at     timestamptz(3) NOT NULL DEFAULT now(),
    source          text NOT NULL CHECK (source IN ('customer.created', 'manual')),
    cause_event_id  uuid,
    PRIMARY KEY (merchant_id, customer_id),
    FOREIGN KEY (merchant_id, tier_id) REFERENCES vip_tiers (merchant_id, tier_id) ON DELETE RESTRICT
) PARTITION BY HASH (merchant_id);

-- Every assignment ever made, append-only: "which tier did customer C hold at time T" is the
-- latest row with assigned_at <= T.
CREATE TABLE customer_tier_history (
    merchant_id     uuid NOT NULL,
    customer_id     uuid NOT NULL,
    id              bigint GENERATED ALWAYS AS IDENTITY,
    tier_id         text NOT NULL,
    assigned_at     timestamptz(3) NOT NULL,
    source          text NOT NULL,
    cause_event_id  uuid,
    PRIMARY KEY (merchant_id, customer_id, id)
) PARTITION BY HASH (merchant_id);

DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format(
            'CREATE TABLE customer_tiers_p%s PARTITION OF customer_tiers FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
            i, i);
        EXECUTE format(
            'CREATE TABLE customer_tier_history_p%s PARTITION OF customer_tier_history FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
            i, i);
    END LOOP;
END $$;

CREATE INDEX idx_customer_tier_history_at ON customer_tier_history (merchant_id, customer_id, assigned_at);

CREATE OR REPLACE FUNCTION customer_tiers_record_history() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_tier_history (merchant_id, customer_id, tier_id, assigned_at, source, cause_event_id)
    VALUES (NEW.merchant_id, NEW.customer_id, NEW.tier_id, NEW.assigned_at, NEW.source, NEW.cause_event_id);
    RETURN NEW;
END $$;

CREATE TRIGGER trg_customer_tier_history AFTER INSERT OR UPDATE ON customer_tiers
    FOR EACH ROW EXECUTE FUNCTION customer_tiers_record_history();

-- Events already applied (deduplication of consumed events).
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    merchant_id  uuid NOT NULL REFERENCES merchants (id),
    event_type   text NOT NULL
                 CHECK (event_type IN ('customer.created', 'vip_tier.assigned', 'vip_tier.updated')),
    created_at   timestamptz(3) NOT NULL DEFAULT now()
);
CREATE INDEX idx_processed_events_merchant_id ON processed_events (merchant_id);
CREATE INDEX idx_processed_events_created_at ON processed_events (created_at);

-- Transactional outbox: written with the change it announces, published by the relay.
CREATE TABLE outbox_events (
    event_id      uuid PRIMARY KEY,
    merchant_id   uuid NOT NULL,
    topic         text NOT NULL,
    key           text NOT NULL,
    payload       jsonb NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz(3) NOT NULL DEFAULT clock_timestamp(),
    published_at  timestamptz(3),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX idx_outbox_events_unpublished ON outbox_events (created_at) WHERE published_at IS NULL;
CREATE INDEX idx_outbox_events_published ON outbox_events (published_at) WHERE published_at IS NOT NULL;

-- Wake the relay as soon as a new event commits.
CREATE OR REPLACE FUNCTION outbox_events_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_events', '');
    RETURN NULL;
END $$;

CREATE TRIGGER trg_outbox_notify AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify();

-- Row-Level Security on every tenant table, forced even for the owner.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['vip_tiers', 'vip_tier_translations', 'customer_tiers',
                             'customer_tier_history', 'processed_events', 'outbox_events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I TO campaign_app '
            'USING (merchant_id = campaign_current_merchant()) '
            'WITH CHECK (merchant_id = campaign_current_merchant())', t);
    END LOOP;
END $$;

-- The registry itself is provisioned by the owner (`campaign-service merchants add`), so RLS
-- is enabled but not forced here: the service role sees only the merchant it acts for.
ALTER TABLE merchants ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON merchants FOR SELECT TO campaign_app
    USING (id = campaign_current_merchant());

-- The outbox relay publishes every merchant's events: it works as `campaign_relay`, a role the
-- service role may switch to (SET ROLE) and that sees the outbox table only.
CREATE POLICY relay_all ON outbox_events TO campaign_relay USING (true) WITH CHECK (true);

GRANT USAGE ON SCHEMA public TO campaign_app, campaign_relay;
GRANT SELECT ON merchants, schema_migrations TO campaign_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON vip_tiers, vip_tier_translations, customer_tiers TO campaign_app;
GRANT SELECT, INSERT ON customer_tier_history, processed_events, outbox_events TO campaign_app;
GRANT SELECT, UPDATE, DELETE ON outbox_events TO campaign_relay;
GRANT EXECUTE ON FUNCTION campaign_current_merchant(), campaign_locale_supported(text),
    validate_benefits(jsonb) TO campaign_app;
