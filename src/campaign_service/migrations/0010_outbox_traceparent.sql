-- The W3C traceparent of the span that wrote the row (the RPC's, or the consumed event's), so
-- the relay's publish span continues that trace and names itself in the Kafka message's
-- `traceparent` header. A column, not a key of `headers`: `headers` is what goes on the wire
-- as is, while this is the publish span's parent and is replaced by the span's own context.
-- NULL when tracing was off as the row was written (a publish span, if tracing is on by then,
-- starts a trace of its own).
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS traceparent text;
