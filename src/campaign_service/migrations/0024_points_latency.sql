-- points.recorded -> vip_tier.assigned latency (issue 13: p99 < 100 ms at 500 events/s).
--
-- The tier reference check of customer_tiers (the statement trigger of 0021) joined the
-- statement's distinct (merchant, tier) pairs to vip_tiers with nested loops off: a hash join over
-- a sequential scan of EVERY tier of every merchant, with the tenant policy evaluated on each row,
-- twice per statement (lock, then look for a missing pair). Its cost grew with the table, not with
-- the statement: with 10,000 merchants (30,000 tiers), 95-165 ms for a 30-row INSERT at load 16
-- (bench.points_latency: the largest statement of a small points batch), where the lookups by key
-- below take 0.8 ms. A points batch at 500 events/s writes a few dozen rows, so this was a fixed
-- cost of every batch, in the path of every event.
--
-- Now each distinct pair, in key order (one lock order), is looked up by primary key and locked
-- FOR KEY SHARE (as the RI check does) in one statement, which also finds a missing pair: the
-- statement is refused with SQLSTATE 23503 and the old constraint's name, as before. A tier
-- deleted by a transaction that commits first makes the lock find nothing: refused, as before.
-- Large statements have at most a few hundred pairs: a 20,000-row UPDATE over 200 merchants (a
-- scheduler chunk's size) spent 14-36 ms in this check instead of 58-77 ms (1,000,000 customers).
CREATE OR REPLACE FUNCTION customer_tiers_check_tiers() RETURNS trigger
    LANGUAGE plpgsql SET enable_seqscan = on SET enable_sort = on AS $$
DECLARE
    missing record;
BEGIN
    SELECT n.merchant_id, n.tier_id INTO missing
        FROM (SELECT DISTINCT merchant_id, tier_id FROM new_rows ORDER BY merchant_id, tier_id) n
        LEFT JOIN LATERAL (
            SELECT true AS found FROM vip_tiers t
            WHERE t.merchant_id = n.merchant_id AND t.tier_id = n.tier_id
            FOR KEY SHARE) x ON true
        WHERE x.found IS NULL
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'insert or update on table "customer_tiers" violates foreign key constraint "customer_tiers_merchant_id_tier_id_fkey"'
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'customer_tiers_merchant_id_tier_id_fkey',
                  TABLE = 'customer_tiers',
                  DETAIL = format('Key (merchant_id, tier_id)=(%s, %s) is not present in table "vip_tiers".',
                                  missing.merchant_id, missing.tier_id);
    END IF;
    RETURN NULL;
END $$;
