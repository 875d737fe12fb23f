-- The read cache's durable epoch (adapters/redis/cache.py). A write that could not block or
-- invalidate its cached answers in Redis advances it in its own transaction, and an instance
-- that meets a Redis it has not confirmed (new connection, a restart or a failover) advances it
-- before trusting that Redis; a cached answer is trusted only under the epoch it was filled in.
-- One row, not per merchant: it moves only while Redis is unreachable or was replaced.
CREATE TABLE cache_epoch (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      bigint NOT NULL CHECK (epoch > 0)
);
INSERT INTO cache_epoch (singleton, epoch) VALUES (true, 1);

GRANT SELECT, UPDATE (epoch) ON cache_epoch TO campaign_app;
