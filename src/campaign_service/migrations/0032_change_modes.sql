-- Issue 14 gaps: a scheduled delete keeps the request's apply mode (NULL: none was given, so the
-- delete fails at its time if customers hold the tier, as an immediate delete without a mode
-- does); every other scheduled change always has a mode (the default upgrades_only).
ALTER TABLE tier_scheduled_changes ALTER COLUMN mode DROP NOT NULL;
ALTER TABLE tier_scheduled_changes ALTER COLUMN mode DROP DEFAULT;
ALTER TABLE tier_scheduled_changes
    ADD CONSTRAINT tier_scheduled_changes_mode_given CHECK (mode IS NOT NULL OR kind = 'tier_delete');
-- Until now the API never passed a mode into a scheduled change: a pending delete carries the
-- column's old default, not a caller's choice. It keeps the behaviour it was scheduled with.
-- (RLS is forced even for the owner: lifted for this one statement, inside this transaction.)
ALTER TABLE tier_scheduled_changes NO FORCE ROW LEVEL SECURITY;
UPDATE tier_scheduled_changes SET mode = NULL WHERE kind = 'tier_delete' AND state = 'pending';
ALTER TABLE tier_scheduled_changes FORCE ROW LEVEL SECURITY;
