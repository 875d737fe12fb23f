-- Issue 12.4/12.5: the request path's role (campaign_app) must not reach other merchants' rows,
-- nor learn their ids. The outbox relay and the tier-count metric now log in as campaign_relay
-- (provision.py, deploy/postgres/init-campaign.sh), and campaign_app is no longer its member.

-- The relay's view of every outbox row holds only in the relay's own sessions: a role that
-- could still SET ROLE campaign_relay (an old membership) gets nothing from it.
DROP POLICY relay_all ON outbox_events;
CREATE POLICY relay_all ON outbox_events TO campaign_relay
    USING (session_user = 'campaign_relay')
    WITH CHECK (session_user = 'campaign_relay');

-- Tier counts per merchant (every merchant id) are for the metric, computed on the relay's pool.
-- Refused to campaign_app sessions even through an old membership of campaign_relay.
CREATE OR REPLACE FUNCTION campaign_tier_counts(top_n integer)
    RETURNS TABLE (merchant_id uuid, tiers bigint)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    n integer := least(greatest(top_n, 0), 1000);
BEGIN
    IF session_user::text = 'campaign_app' OR (
        NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = session_user)
        AND pg_has_role(session_user, 'campaign_app', 'MEMBER')) THEN
        RAISE EXCEPTION 'campaign_tier_counts: not for the service role' USING ERRCODE = 'insufficient_privilege';
    END IF;
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

REVOKE ALL ON FUNCTION campaign_tier_counts(integer) FROM PUBLIC, campaign_app;
GRANT EXECUTE ON FUNCTION campaign_tier_counts(integer) TO campaign_relay;

-- The membership itself: dropped here when the migrating role may (else provisioning does it,
-- and the service refuses to start while it remains: bootstrap.check_app_role).
DO $$
BEGIN
    IF pg_has_role('campaign_app', 'campaign_relay', 'MEMBER') THEN
        BEGIN
            REVOKE campaign_relay FROM campaign_app;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'campaign_app is still a member of campaign_relay: run REVOKE campaign_relay FROM campaign_app as a superuser';
        END;
    END IF;
END $$;
