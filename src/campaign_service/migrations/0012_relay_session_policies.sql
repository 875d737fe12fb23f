-- 0011 let campaign_relay purge processed_events when current_user is the relay, which a session
-- of another role reaches by SET ROLE through a membership. Since 0009 the relay logs in as itself,
-- so these policies, like the outbox's, hold only for sessions that logged in as the relay.
ALTER POLICY relay_retention ON processed_events USING (session_user = 'campaign_relay');
ALTER POLICY relay_retention_delete ON processed_events USING (session_user = 'campaign_relay');
ALTER POLICY only_the_relay_deletes ON processed_events USING (session_user = 'campaign_relay');
