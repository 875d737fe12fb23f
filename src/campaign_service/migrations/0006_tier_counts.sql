-- Tiers per merchant for the `vip_tiers_total` metric, with bounded label cardinality.
-- (Numbered after the issue that added it, so concurrent branches' 0002.. files cannot clash.)
--
-- The service role sees one merchant at a time (RLS), so it cannot count across merchants. This
-- SECURITY DEFINER function runs as the owner and returns counts only, never tier data: the
-- `top_n` merchants with the most tiers, then one row with merchant_id NULL summing the rest.
-- RLS stays FORCED for the owner: the owner's read policy below is switched on only inside the
-- function, so migrations and `merchants add` still see no tenant rows.

CREATE POLICY tier_counts ON vip_tiers FOR SELECT TO campaign_owner
    USING (current_setting('campaign.tier_counts', true) = 'on');

CREATE OR REPLACE FUNCTION campaign_tier_counts(top_n integer)
    RETURNS TABLE (merchant_id uuid, tiers bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    n integer := least(greatest(top_n, 0), 1000);
BEGIN
    -- (A `SET campaign.tier_counts` clause on the function would be cleaner, but PostgreSQL 15+
    -- refuses stored placeholder settings from non-superusers.) Local to the transaction, and
    -- switched off again before returning.
    PERFORM set_config('campaign.tier_counts', 'on', true);
    RETURN QUERY
        WITH per_merchant AS (
            SELECT v.merchant_id, count(*) AS tiers FROM public.vip_tiers v GROUP BY v.merchant_id
        ), ranked AS (
            SELECT p.merchant_id, p.tiers,
                   row_number() OVER (ORDER BY p.tiers DESC, p.merchant_id) AS rank
            FROM per_merchant p
        )
        SELECT r.merchant_id, r.tiers FROM ranked r WHERE r.rank <= n
        UNION ALL
        SELECT NULL::uuid, coalesce(sum(r.tiers), 0)::bigint FROM ranked r WHERE r.rank > n;
    PERFORM set_config('campaign.tier_counts', 'off', true);
END $$;

REVOKE ALL ON FUNCTION campaign_tier_counts(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION campaign_tier_counts(integer) TO campaign_app;
