-- Deadline scheduler at scale (issue 13: 1,000,000 due customers in <= 60 s). See
-- adapters/postgres/reassessment.py and bench/scheduler.py --explain.
--
-- 1. The scheduler's chunk statement is planned with enable_sort and enable_seqscan off (set
--    locally around that one statement): RLS makes the planner expect ~1% of a group's rows, so
--    it sorted every due row of the group to take the first chunk (100,000 rows per 5,000
--    claimed), and joined the UPDATE to a sequential scan of every partition of customer_tiers
--    (1,000,000 rows per chunk: it does not cost run-time partition pruning). The statement
--    triggers the UPDATE fires are planned with those settings too, so they say what they want.
ALTER FUNCTION customer_tiers_history_on_update() SET enable_seqscan = on;
ALTER FUNCTION customer_tiers_history_on_update() SET enable_sort = on;
ALTER FUNCTION customer_tiers_check_tiers() SET enable_seqscan = on;
ALTER FUNCTION customer_tiers_check_tiers() SET enable_sort = on;

-- 2. One index fewer per history row: the history page (ORDER BY id DESC) reads the primary key
--    (merchant_id, customer_id, id) backwards; this index duplicated it.
DROP INDEX IF EXISTS idx_customer_tier_history_id;
