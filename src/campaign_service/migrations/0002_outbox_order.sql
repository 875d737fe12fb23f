-- Publication order of the outbox. created_at has millisecond precision, so the rows of one
-- transaction (or of two quick transactions on the same tier) can tie; `seq` is the insertion
-- order, and rows of one key are inserted in commit order because their writers lock the same row.
ALTER TABLE outbox_events ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
DROP INDEX idx_outbox_events_unpublished;
CREATE INDEX idx_outbox_events_unpublished ON outbox_events (seq) WHERE published_at IS NULL;
