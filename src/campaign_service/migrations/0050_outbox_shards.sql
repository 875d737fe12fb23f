-- Issue 15.3 / 14: the outbox is published by several relays (or several claims of one relay) at
-- once, and the events of each key still go out in their order. Until now one advisory lock let
-- one claim publish at a time, whoever held it. Now the outbox has 16 shards by key: the events
-- of a key are all in one shard, and a shard is claimed by one transaction at a time (an advisory
-- lock per shard), oldest row first. Different shards are claimed and published in parallel.
-- 16 shards = at most 16 claims in flight across all replicas; the count is fixed here because
-- a key must never change shard while rows of it are pending.

-- hashtext is what hash indexes of text use, so it is stable across PostgreSQL upgrades.
CREATE FUNCTION campaign_outbox_shard(key text) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT pg_catalog.hashtext(key) & 15 $$;

-- A stored column, not an index on the expression: Row-Level Security (forced, also for the
-- relay) lets only leakproof conditions use an index, and hashtext is not marked leakproof; a
-- comparison of two integers is. Adding it rewrites the table once (published rows are purged
-- after the retention, so it holds a few days of events).
ALTER TABLE outbox_events ADD COLUMN shard smallint NOT NULL
    GENERATED ALWAYS AS (campaign_outbox_shard(key)) STORED;

-- The relay's claim reads the oldest pending rows of one shard: (shard, seq), pending rows only.
DROP INDEX idx_outbox_events_unpublished;
CREATE INDEX idx_outbox_events_unpublished ON outbox_events (shard, seq) WHERE published_at IS NULL;

-- Locks, for the calling transaction, up to `most` shards that have pending rows, trying them
-- from shard `first` on (the caller rotates it so that no shard waits behind the others), and
-- says how many shards with pending rows it left (locked by another claim, or beyond `most`).
-- Lock keys: (0x43414D51, shard). A relay of before this migration locks the whole outbox with
-- the single key 0x43414D51; each claim here holds that key SHARED, so old and new relays (a
-- rolling upgrade) never publish at the same time, while the new ones share it among themselves.
CREATE FUNCTION campaign_outbox_lock_shards(first integer, most integer, OUT locked integer[], OUT busy integer)
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    s integer;
BEGIN
    locked := '{}';
    busy := 0;
    IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(1128353105::bigint) THEN
        busy := 1;  -- an old relay is publishing
        RETURN;
    END IF;
    FOR i IN 0..15 LOOP
        s := (((first % 16) + 16 + i) % 16);
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM public.outbox_events o
            WHERE o.shard = s AND o.published_at IS NULL);
        IF cardinality(locked) < most AND pg_catalog.pg_try_advisory_xact_lock(1128353105, s) THEN
            locked := locked || s;
        ELSE
            busy := busy + 1;
        END IF;
    END LOOP;
END $$;

REVOKE ALL ON FUNCTION campaign_outbox_lock_shards(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION campaign_outbox_lock_shards(integer, integer) TO campaign_relay;
GRANT EXECUTE ON FUNCTION campaign_outbox_shard(text) TO campaign_relay, campaign_app;
