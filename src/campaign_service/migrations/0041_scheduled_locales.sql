-- Scheduled changes (0031) are held to the merchant's locales too (issue 16). A pending tier
-- create or update is tier text that will be written at its time: it may only use locales the
-- merchant has enabled (checked when it is stored, reading the set FOR SHARE like every tier
-- write), and a locale a pending change uses cannot leave the set (as a locale that holds text
-- cannot). Without this the activation met the tier triggers of 0040 at its time and failed.

-- The locales a scheduled change's payload writes: the tier's `locale`, its translations and its
-- perk labels, each when the change's mask names the field (a create names every field).
CREATE OR REPLACE FUNCTION campaign_scheduled_locales(payload jsonb) RETURNS SETOF text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT payload #>> '{spec,locale}'
    WHERE payload -> 'mask' ? 'locale' AND payload #>> '{spec,locale}' IS NOT NULL
    UNION
    SELECT k FROM jsonb_object_keys(
        CASE WHEN payload -> 'mask' ? 'translations' AND jsonb_typeof(payload #> '{spec,translations}') = 'object'
             THEN payload #> '{spec,translations}' ELSE '{}'::jsonb END) AS k
    UNION
    SELECT k FROM jsonb_array_elements(
        CASE WHEN payload -> 'mask' ? 'benefits' AND jsonb_typeof(payload #> '{spec,benefits,custom_perks}') = 'array'
             THEN payload #> '{spec,benefits,custom_perks}' ELSE '[]'::jsonb END) AS p,
        jsonb_object_keys(p -> 'label') AS k
$$;

CREATE OR REPLACE FUNCTION tier_scheduled_changes_validate_locales() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    tag text;
BEGIN
    IF NEW.state <> 'pending' OR NEW.kind NOT IN ('tier_create', 'tier_update') THEN
        RETURN NEW;
    END IF;
    SELECT l INTO tag FROM campaign_scheduled_locales(NEW.payload) AS l
    WHERE NOT l = ANY (campaign_merchant_locales(NEW.merchant_id)) LIMIT 1;
    IF tag IS NOT NULL THEN
        RAISE EXCEPTION 'locale: % is not enabled for this merchant', left(tag, 35)
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER trg_validate_locales BEFORE INSERT OR UPDATE OF payload ON tier_scheduled_changes
    FOR EACH ROW EXECUTE FUNCTION tier_scheduled_changes_validate_locales();

-- 0040's check of a new set, plus: no locale a pending scheduled change uses may go. A locale
-- still in use is `restrict_violation` (23001), not `check_violation`: the set is well-formed, the
-- data it would orphan is the problem (the service answers FAILED_PRECONDITION, as its own check
-- does, also when a concurrent first tier write made the text appear after that check).
CREATE OR REPLACE FUNCTION merchant_locales_validate() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    tag text;
    used text;
BEGIN
    FOREACH tag IN ARRAY NEW.locales LOOP
        IF NOT campaign_locale_supported(tag) THEN
            RAISE EXCEPTION 'locales: % is not a locale tag CLDR knows (language[-Script][-REGION])', left(tag, 35)
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
        RAISE EXCEPTION 'locales: % still holds tier text', used USING ERRCODE = 'restrict_violation';
    END IF;
    SELECT l INTO used FROM tier_scheduled_changes c, campaign_scheduled_locales(c.payload) AS l
    WHERE c.merchant_id = NEW.merchant_id AND c.state = 'pending' AND c.kind IN ('tier_create', 'tier_update')
        AND NOT l = ANY (NEW.locales)
    LIMIT 1;
    IF used IS NOT NULL THEN
        RAISE EXCEPTION 'locales: % is used by a pending scheduled change', used
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        NEW.version := OLD.version + 1;
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END $$;
