-- Found by tests/integration/test_tenant_isolation.py: the `relay_all` policy of 0001 applies
-- to every member of campaign_relay, and campaign_app is one (so that the outbox relay can
-- SET ROLE campaign_relay). The service role therefore saw, and could update and delete, every
-- merchant's outbox rows without switching roles, whatever app.merchant_id said. The policy now
-- applies only while the session has actually switched to the relay role.
DROP POLICY relay_all ON outbox_events;
CREATE POLICY relay_all ON outbox_events TO campaign_relay
    USING (current_user = 'campaign_relay')
    WITH CHECK (current_user = 'campaign_relay');
