-- The W3C traceparent of the span that wrote the row (the RPC's, or the consumed event's), so
-- the relay's publish span continues that trace and names itself in the Kafka message's
-- `traceparent` header. A column, not a key of `headers`: `headers` is what goes on the wire
-- as is, while this is the publish span's parent (the header sent names the span itself).
-- NULL when tracing was off as the row was written (a publish span, if tracing is on by then,
-- starts a trace of its own).
-- The check keeps it to random trace and span ids (W3C version 00): nothing personal fits.
ALTER TABLE outbox_events ADD COLUMN IF NOT EXISTS traceparent text
    CONSTRAINT outbox_events_traceparent_w3c
    CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');
