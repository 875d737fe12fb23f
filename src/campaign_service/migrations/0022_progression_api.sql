-- Tier progression, the API side (issue 13): an audit row for every hand-made tier assignment
-- (SetCustomerTier), with its reason code. The history row of a move is written by the
-- customer_tiers triggers (0020) as for every writer; this table adds what only a manual
-- assignment has (the reason code, the floor asked for), also when the tier did not change.
CREATE TABLE tier_manual_assignments (
    merchant_id    uuid NOT NULL REFERENCES merchants (id),
    customer_id    uuid NOT NULL,
    id             bigint GENERATED ALWAYS AS IDENTITY,
    tier_id        text NOT NULL,
    moved          boolean NOT NULL,
    floor_tier_id  text,
    floor_until    timestamptz(3),
    reason         text NOT NULL CHECK (reason ~ '^[a-z0-9_.-]{1,64}$'),
    actor          text NOT NULL,
    at             timestamptz(3) NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, customer_id, id)
);

ALTER TABLE tier_manual_assignments ENABLE ROW LEVEL SECURITY;
ALTER TABLE tier_manual_assignments FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tier_manual_assignments TO campaign_app
    USING (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text)
    WITH CHECK (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text);
-- Append-only for the service, like the history.
GRANT SELECT, INSERT ON tier_manual_assignments TO campaign_app;

-- The history page reads newest first by id.
CREATE INDEX idx_customer_tier_history_id ON customer_tier_history (merchant_id, customer_id, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Erasure (customer.deleted): the history and the manual-assignment audit are append-only for
-- the service role (no UPDATE, no DELETE granted), and stay so. The one way to delete from them
-- is this function: it runs as the owner, deletes ONE customer's rows of the merchant the calling
-- transaction is scoped to (app.merchant_id; refused without one), and nothing else. The owner's
-- policies below admit rows only while the function runs and only of that merchant.
-- customer_tiers and qualifying_points_daily are deleted by the service role itself (it may).
CREATE POLICY erase_customer_read ON customer_tier_history FOR SELECT TO campaign_owner
    USING (current_setting('campaign.erasing', true) = 'on' AND merchant_id = campaign_current_merchant());
CREATE POLICY erase_customer ON customer_tier_history FOR DELETE TO campaign_owner
    USING (current_setting('campaign.erasing', true) = 'on' AND merchant_id = campaign_current_merchant());
CREATE POLICY erase_customer_read ON tier_manual_assignments FOR SELECT TO campaign_owner
    USING (current_setting('campaign.erasing', true) = 'on' AND merchant_id = campaign_current_merchant());
CREATE POLICY erase_customer ON tier_manual_assignments FOR DELETE TO campaign_owner
    USING (current_setting('campaign.erasing', true) = 'on' AND merchant_id = campaign_current_merchant());

CREATE OR REPLACE FUNCTION campaign_erase_customer_history(customer uuid)
    RETURNS bigint
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    m uuid := public.campaign_current_merchant();
    n bigint;
BEGIN
    IF m IS NULL OR customer IS NULL THEN
        RAISE EXCEPTION 'erasure needs a transaction scoped to one merchant (app.merchant_id)'
            USING ERRCODE = '42501';
    END IF;
    PERFORM set_config('campaign.erasing', 'on', true);
    DELETE FROM public.customer_tier_history WHERE merchant_id = m AND customer_id = customer;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM public.tier_manual_assignments WHERE merchant_id = m AND customer_id = customer;
    PERFORM set_config('campaign.erasing', 'off', true);
    RETURN n;
END $$;

REVOKE ALL ON FUNCTION campaign_erase_customer_history(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION campaign_erase_customer_history(uuid) TO campaign_app;

-- ---------------------------------------------------------------------------------------------
-- Downgrade warnings (programme downgrade_warning_days): one row per customer and deadline
-- warned about, so `vip_tier.downgrade_scheduled` goes out once per deadline.
CREATE TABLE tier_downgrade_warnings (
    merchant_id  uuid NOT NULL REFERENCES merchants (id),
    customer_id  uuid NOT NULL,
    deadline     timestamptz(3) NOT NULL,
    warned_at    timestamptz(3) NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, customer_id, deadline)
);
ALTER TABLE tier_downgrade_warnings ENABLE ROW LEVEL SECURITY;
ALTER TABLE tier_downgrade_warnings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tier_downgrade_warnings TO campaign_app
    USING (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text)
    WITH CHECK (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text);
GRANT SELECT, INSERT, DELETE ON tier_downgrade_warnings TO campaign_app;

-- Which merchants have customers to warn at `at` (ids only, like campaign_due_merchants): a
-- programme with warnings on and deadlines, and a customer whose deadline is within the
-- warning days. The owner's read policies are on only inside the function.
CREATE POLICY warning_merchants ON tier_programs FOR SELECT TO campaign_owner
    USING (current_setting('campaign.warning_merchants', true) = 'on');
CREATE POLICY warning_merchants ON customer_tiers FOR SELECT TO campaign_owner
    USING (current_setting('campaign.warning_merchants', true) = 'on');

CREATE OR REPLACE FUNCTION campaign_warning_merchants(at timestamptz, max_merchants integer)
    RETURNS TABLE (merchant_id uuid)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    PERFORM set_config('campaign.warning_merchants', 'on', true);
    RETURN QUERY
        SELECT p.merchant_id FROM public.tier_programs p
        WHERE p.downgrade_warning_days > 0 AND p.downgrade_policy <> 'never' AND p.window_kind <> 'lifetime'
          AND EXISTS (SELECT 1 FROM public.customer_tiers c
                      WHERE c.merchant_id = p.merchant_id AND c.deadline > at
                        AND c.deadline <= at + make_interval(days => p.downgrade_warning_days))
        ORDER BY p.merchant_id
        LIMIT least(greatest(max_merchants, 1), 100000);
    PERFORM set_config('campaign.warning_merchants', 'off', true);
END $$;

-- The due backlog for the metrics: how many customers are past their deadline at `at` and the
-- earliest such deadline (a count and a time, nothing of any merchant or customer).
CREATE OR REPLACE FUNCTION campaign_due_backlog(at timestamptz)
    RETURNS TABLE (due bigint, oldest timestamptz)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    PERFORM set_config('campaign.warning_merchants', 'on', true);
    RETURN QUERY SELECT count(*)::bigint, min(c.deadline)::timestamptz FROM public.customer_tiers c WHERE c.deadline <= at;
    PERFORM set_config('campaign.warning_merchants', 'off', true);
END $$;

REVOKE ALL ON FUNCTION campaign_warning_merchants(timestamptz, integer), campaign_due_backlog(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION campaign_warning_merchants(timestamptz, integer), campaign_due_backlog(timestamptz)
    TO campaign_app;
