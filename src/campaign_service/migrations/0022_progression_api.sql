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
