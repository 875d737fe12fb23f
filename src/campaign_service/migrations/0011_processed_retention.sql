-- processed_events is purged after a retention (longer than the customer.created topic's, so
-- every event Kafka can still deliver again is remembered). The purge runs as the relay role, like
-- the outbox purge: it may read and delete every merchant's rows, and only while the session has
-- switched to it (as 0007 does for the outbox).
GRANT SELECT, DELETE ON processed_events TO campaign_relay;
CREATE POLICY relay_retention ON processed_events FOR SELECT TO campaign_relay
    USING (current_user = 'campaign_relay');
CREATE POLICY relay_retention_delete ON processed_events FOR DELETE TO campaign_relay
    USING (current_user = 'campaign_relay');
-- A member of campaign_relay inherits the DELETE grant, and the service role's tenant_isolation
-- policy (FOR ALL) would then let it delete its merchant's dedupe rows, so a redelivered event
-- would be applied again (tests/integration/test_outbox_relay.py found it). Deleting is the
-- relay role's alone, whatever the permissive policies say.
CREATE POLICY only_the_relay_deletes ON processed_events AS RESTRICTIVE FOR DELETE
    USING (current_user = 'campaign_relay');
