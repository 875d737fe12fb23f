-- Re-assessment jobs (issue 14): applying a change that affects qualification (a threshold edit,
-- a tier created or deleted, a programme edit) re-assesses every customer of the merchant in a
-- background job. The job and its keyset position live here, so any replica resumes it after a
-- kill -9: each chunk's transaction locks the job row, moves the chunk's customers (state,
-- history, outbox) and advances `cursor` in the same commit, so a customer is assessed once.
CREATE TABLE tier_change_jobs (
    merchant_id      uuid NOT NULL REFERENCES merchants (id),
    job_id           uuid NOT NULL DEFAULT gen_random_uuid(),
    change_id        uuid NOT NULL,
    mode             text NOT NULL DEFAULT 'upgrades_only'
                     CHECK (mode IN ('upgrades_only', 'full', 'next_period')),
    state            text NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    config_version   bigint NOT NULL DEFAULT 0,
    not_before       timestamptz(3) NOT NULL DEFAULT now(),
    customers_total  bigint NOT NULL DEFAULT 0,
    customers_done   bigint NOT NULL DEFAULT 0,
    moved            bigint NOT NULL DEFAULT 0,
    cursor           uuid,
    created_at       timestamptz(3) NOT NULL DEFAULT now(),
    started_at       timestamptz(3),
    finished_at      timestamptz(3),
    error            text,
    PRIMARY KEY (merchant_id, job_id),
    -- A change never runs twice: enqueueing it again answers the job it already has.
    CONSTRAINT unique_tier_change_jobs_change UNIQUE (merchant_id, change_id),
    CHECK (customers_done >= 0 AND moved >= 0 AND customers_total >= 0)
);

-- The runners' search: unfinished jobs by when they may start.
CREATE INDEX idx_tier_change_jobs_pending ON tier_change_jobs (not_before, merchant_id, created_at)
    WHERE state IN ('queued', 'running');

ALTER TABLE tier_change_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE tier_change_jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tier_change_jobs TO campaign_app
    USING (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text)
    WITH CHECK (merchant_id = campaign_current_merchant() OR (SELECT campaign_scope()) ? merchant_id::text);
GRANT SELECT, INSERT, UPDATE ON tier_change_jobs TO campaign_app;

-- ---------------------------------------------------------------------------------------------
-- Enqueue, inside the calling transaction (scoped to ONE merchant: app.merchant_id). Idempotent
-- per change: the job already enqueued for `change` is answered and nothing is added. Runs as
-- the caller (RLS applies); the Python side is adapters/postgres/repositories/tier_change_jobs.py
-- (`work.tier_change_jobs.enqueue(...)` in a TenantUnitOfWork).
CREATE OR REPLACE FUNCTION campaign_enqueue_tier_change_job(
    change uuid, apply_mode text, version bigint, start_at timestamptz)
    RETURNS uuid
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    m uuid := campaign_current_merchant();
    job uuid;
BEGIN
    IF m IS NULL THEN
        RAISE EXCEPTION 'enqueueing a tier change job needs a transaction scoped to one merchant (app.merchant_id)'
            USING ERRCODE = '42501';
    END IF;
    INSERT INTO tier_change_jobs (merchant_id, change_id, mode, config_version, not_before)
    VALUES (m, change, coalesce(apply_mode, 'upgrades_only'), coalesce(version, 0), coalesce(start_at, now()))
    ON CONFLICT (merchant_id, change_id) DO NOTHING
    RETURNING job_id INTO job;
    IF job IS NULL THEN
        SELECT j.job_id INTO job FROM tier_change_jobs j WHERE j.merchant_id = m AND j.change_id = change;
    END IF;
    PERFORM pg_notify('tier_change_jobs', '');
    RETURN job;
END $$;
GRANT EXECUTE ON FUNCTION campaign_enqueue_tier_change_job(uuid, text, bigint, timestamptz) TO campaign_app;

-- ---------------------------------------------------------------------------------------------
-- Which jobs may run at `at`: the oldest unfinished job of each merchant whose time has come
-- (a merchant's jobs run one after another, in the order enqueued). The runners' only
-- cross-merchant read, ids only, like campaign_due_merchants; each chunk then runs as the service
-- role in a transaction scoped to the job's merchant (RLS applies).
CREATE POLICY runnable_jobs ON tier_change_jobs FOR SELECT TO campaign_owner
    USING (current_setting('campaign.runnable_jobs', true) = 'on');

CREATE OR REPLACE FUNCTION campaign_runnable_tier_change_jobs(at timestamptz, max_jobs integer)
    RETURNS TABLE (merchant_id uuid, job_id uuid)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    PERFORM set_config('campaign.runnable_jobs', 'on', true);
    RETURN QUERY
        SELECT f.merchant_id, f.job_id FROM (
            SELECT DISTINCT ON (j.merchant_id) j.merchant_id, j.job_id, j.not_before
            FROM public.tier_change_jobs j
            WHERE j.state IN ('queued', 'running')
            ORDER BY j.merchant_id, j.created_at, j.job_id
        ) f
        WHERE f.not_before <= at
        ORDER BY f.not_before, f.merchant_id
        LIMIT least(greatest(max_jobs, 1), 10000);
    PERFORM set_config('campaign.runnable_jobs', 'off', true);
END $$;

REVOKE ALL ON FUNCTION campaign_runnable_tier_change_jobs(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION campaign_runnable_tier_change_jobs(timestamptz, integer) TO campaign_app;
