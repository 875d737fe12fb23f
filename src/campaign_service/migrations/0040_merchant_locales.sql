-- Locales a merchant chooses (issue 16). Until now the allow-list of locales was a constant
-- (`campaign_locale_supported`: en, ar, he). Now each merchant has its set in merchant_locales,
-- and every writer of tier text is held to it by triggers: a tier's `locale`, its translations
-- and its perk labels must be locales the merchant has enabled, and a locale that still holds
-- text cannot be removed from the set. Which tags may enter a set at all (the locales CLDR
-- knows) is the service's check (Babel's data); the database checks their shape.
--
-- A merchant without a row has the default set (en, ar, he). The first tier write of such a
-- merchant inserts that row (version 0), and every tier write reads the set FOR SHARE, so a
-- concurrent change of the set (an UPDATE of that row) waits for the write to commit and then
-- sees its text, or the write waits for the change and sees the new set: no write skew.

-- The shape of a stored locale: language, optional script, optional region (CLDR's canonical
-- form, e.g. `en`, `en-GB`, `zh-Hant-TW`, `sr-Latn-RS`, `es-419`). The CHECKs of 0001 call this.
CREATE OR REPLACE FUNCTION campaign_locale_supported(tag text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT tag ~ '^[a-z]{2,3}(-[A-Z][a-z]{3})?(-([A-Z]{2}|[0-9]{3}))?$' $$;

CREATE TABLE merchant_locales (
    merchant_id  uuid PRIMARY KEY REFERENCES merchants (id),
    locales      text[] NOT NULL CHECK (cardinality(locales) BETWEEN 1 AND 50
                                        AND array_position(locales, NULL) IS NULL),
    version      bigint NOT NULL DEFAULT 1 CHECK (version >= 0),
    updated_at   timestamptz(3) NOT NULL DEFAULT now()
);

-- Merchants provisioned before this migration: the default set, never changed (version 0).
INSERT INTO merchant_locales (merchant_id, locales, version)
SELECT id, ARRAY['en', 'ar', 'he'], 0 FROM merchants
ON CONFLICT (merchant_id) DO NOTHING;

ALTER TABLE merchant_locales ENABLE ROW LEVEL SECURITY;
ALTER TABLE merchant_locales FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON merchant_locales TO campaign_app
    USING (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text)
    WITH CHECK (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text);
-- UPDATE also because tier writes read the set FOR SHARE.
GRANT SELECT, INSERT, UPDATE ON merchant_locales TO campaign_app;

-- A set is well-formed, holds no duplicates, and drops no locale the merchant's tiers still use;
-- a change moves the version on.
CREATE OR REPLACE FUNCTION merchant_locales_validate() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    tag text;
    used text;
BEGIN
    FOREACH tag IN ARRAY NEW.locales LOOP
        IF NOT campaign_locale_supported(tag) THEN
            RAISE EXCEPTION 'locales: % is not a locale tag (language[-Script][-REGION])', left(tag, 35)
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF cardinality(NEW.locales) <> (SELECT count(DISTINCT t) FROM unnest(NEW.locales) AS t) THEN
        RAISE EXCEPTION 'locales: duplicate locale' USING ERRCODE = 'check_violation';
    END IF;
    SELECT u INTO used FROM (
        SELECT t.locale AS u FROM vip_tiers t WHERE t.merchant_id = NEW.merchant_id
        UNION ALL
        SELECT tr.locale FROM vip_tier_translations tr WHERE tr.merchant_id = NEW.merchant_id
        UNION ALL
        SELECT k FROM vip_tiers t,
            jsonb_array_elements(coalesce(t.benefits -> 'custom_perks', '[]'::jsonb)) AS p,
            jsonb_object_keys(p -> 'label') AS k
        WHERE t.merchant_id = NEW.merchant_id
    ) AS uses WHERE NOT u = ANY (NEW.locales) LIMIT 1;
    IF used IS NOT NULL THEN
        RAISE EXCEPTION 'locales: % still holds tier text', used USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER trg_validate_locales BEFORE INSERT OR UPDATE ON merchant_locales
    FOR EACH ROW EXECUTE FUNCTION merchant_locales_validate();

-- The merchant's set, locked FOR SHARE until the transaction ends (inserting the default set
-- first when the merchant has none).
CREATE OR REPLACE FUNCTION campaign_merchant_locales(merchant uuid) RETURNS text[]
    LANGUAGE plpgsql AS $$
DECLARE
    result text[];
BEGIN
    SELECT locales INTO result FROM merchant_locales WHERE merchant_id = merchant FOR SHARE;
    IF NOT FOUND THEN
        INSERT INTO merchant_locales (merchant_id, locales, version)
        VALUES (merchant, ARRAY['en', 'ar', 'he'], 0)
        ON CONFLICT (merchant_id) DO NOTHING;
        SELECT locales INTO result FROM merchant_locales WHERE merchant_id = merchant FOR SHARE;
    END IF;
    RETURN result;
END $$;

-- Tier text only in enabled locales: the tier's default locale and every perk label's.
-- (Named to fire after trg_validate_benefits, which checks the benefits' shape first.)
CREATE OR REPLACE FUNCTION vip_tiers_validate_locales() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    enabled text[] := campaign_merchant_locales(NEW.merchant_id);
    tag text;
BEGIN
    IF NOT NEW.locale = ANY (enabled) THEN
        RAISE EXCEPTION 'locale: % is not enabled for this merchant', left(NEW.locale, 35)
            USING ERRCODE = 'check_violation';
    END IF;
    FOR tag IN
        SELECT k FROM jsonb_array_elements(coalesce(NEW.benefits -> 'custom_perks', '[]'::jsonb)) AS p,
            jsonb_object_keys(p -> 'label') AS k
    LOOP
        IF NOT tag = ANY (enabled) THEN
            RAISE EXCEPTION 'benefits.custom_perks.label: % is not enabled for this merchant', left(tag, 35)
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    RETURN NEW;
END $$;

CREATE TRIGGER trg_validate_locales BEFORE INSERT OR UPDATE OF locale, benefits ON vip_tiers
    FOR EACH ROW EXECUTE FUNCTION vip_tiers_validate_locales();

CREATE OR REPLACE FUNCTION vip_tier_translations_validate_locale() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NOT NEW.locale = ANY (campaign_merchant_locales(NEW.merchant_id)) THEN
        RAISE EXCEPTION 'translations: % is not enabled for this merchant', left(NEW.locale, 35)
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER trg_validate_locale BEFORE INSERT OR UPDATE OF locale ON vip_tier_translations
    FOR EACH ROW EXECUTE FUNCTION vip_tier_translations_validate_locale();
