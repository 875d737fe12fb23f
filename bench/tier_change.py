"""Programme changes at scale (issue 14): preview, then apply `full`, over one merchant's 1,000,000 customers.

Seeds a fresh database as the superuser (SQL, triggers off): one merchant, tiers t0 (0) < t1 (1000)
< t2 (5000) < t3 (20000), a lifetime programme, N customers each holding the tier its points
reach (points uniform in 0..10,000, on two days). The change: t1 500, t2 6000, t3 9500, so
in `full` 5 % move t0->t1, 10 % t2->t1 and 5 % t2->t3 (20 %: 200,000 of 1,000,000).
Then, as the service role (RLS on), in this process:
  preview  the proposed ladder (not stored), `full`, the from->to matrix with 5 samples per cell;
  apply    the ladder stored, a job enqueued and run chunk by chunk to the end (state, history,
           one vip_tier.assigned outbox row per move, cursor, all per chunk).
Prints wall time, this process's CPU and PostgreSQL's CPU (all its processes) per phase, per
customer; writes bench/results/tier_change.json.

    .venv/bin/python -m bench.tier_change [--customers 1000000] [--chunk 20000] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.harness import fresh_database, save_result, services
from bench.points import cluster_cpu_seconds
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.postgres.tier_change_jobs import Configuration, PgTierChangeEngine
from campaign_service.domain.progression import Ladder, Level, Programme

OLD = {"t0": 0, "t1": 1000, "t2": 5000, "t3": 20000}
NEW = {"t0": 0, "t1": 500, "t2": 6000, "t3": 9500}
STAMP = datetime(2027, 6, 1, tzinfo=UTC)


async def seed(superuser_dsn: str, db_name: str, merchant: uuid.UUID, customers: int) -> None:
    conn = await asyncpg.connect(superuser_dsn, database=db_name)
    try:
        await conn.execute("SET session_replication_role = replica")  # no triggers while seeding
        await conn.execute("INSERT INTO merchants (id) VALUES ($1)", merchant)
        for tier, mp in OLD.items():
            await conn.execute(
                "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points, is_default) VALUES ($1, $2, $2, $3, $4)",
                merchant, tier, mp, tier == "t0",
            )  # fmt: skip
        await conn.execute(
            "CREATE UNLOGGED TABLE pop AS SELECT gen_random_uuid() AS c, (random() * 10000)::int AS pts"
            " FROM generate_series(1, $1)",
            customers,
        )
        await conn.execute(
            "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, assigned_at, source, qualifying_points,"
            " held_tiers, program_version)"
            " SELECT $1, c, CASE WHEN pts >= 20000 THEN 't3' WHEN pts >= 5000 THEN 't2' WHEN pts >= 1000 THEN 't1'"
            " ELSE 't0' END, '2026-01-01', 'points.recorded', pts, '{}', 0 FROM pop ORDER BY c",
            merchant,
        )
        await conn.execute(
            "INSERT INTO qualifying_points_daily (merchant_id, customer_id, day, points)"
            " SELECT $1, c, d.day, CASE WHEN d.first THEN pts / 2 ELSE pts - pts / 2 END"
            " FROM pop, (VALUES ('2026-03-01'::date, true), ('2026-09-01'::date, false)) d(day, first) ORDER BY c",
            merchant,
        )
        await conn.execute("DROP TABLE pop")
        await conn.execute("SET session_replication_role = DEFAULT")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def set_ladder(app_pool: Any, merchant: uuid.UUID) -> None:
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        for tier, mp in NEW.items():
            await conn.execute(
                "UPDATE vip_tiers SET min_points = $3 WHERE merchant_id = $1 AND tier_id = $2", merchant, tier, mp
            )


def measure() -> tuple[float, float, float | None]:
    return time.monotonic(), time.process_time(), cluster_cpu_seconds()


def spent(before: tuple[float, float, float | None], n: int) -> dict[str, Any]:
    wall, cpu, db = before
    wall1, cpu1, db1 = measure()
    pg = None if db is None or db1 is None else db1 - db
    return {
        "wall_s": round(wall1 - wall, 2),
        "service_cpu_s": round(cpu1 - cpu, 2),
        "postgres_cpu_s": None if pg is None else round(pg, 2),
        "service_cpu_us_per_customer": round((cpu1 - cpu) / n * 1e6, 3),
        "postgres_cpu_us_per_customer": None if pg is None else round(pg / n * 1e6, 3),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with services("postgres") as env:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        merchant = uuid.uuid4()
        t0 = time.monotonic()
        await seed(db.superuser_dsn, db.name, merchant, args.customers)
        seed_s = time.monotonic() - t0
        pool = await create_pool(db.app_dsn, min_size=2, max_size=args.workers + 2, statement_timeout_ms=300_000)
        try:
            engine = PgTierChangeEngine(pool)
            proposed = Configuration(Programme(), Ladder(Level(t, mp) for t, mp in NEW.items()), "full")
            before = measure()
            matrix = await engine.preview(merchant, proposed, STAMP, chunk=args.chunk * 2, workers=args.workers)
            preview = spent(before, args.customers)
            await set_ladder(pool, merchant)
            async with PgUnitOfWork(pool)(merchant) as work:
                job_id = await work.tier_change_jobs.enqueue(uuid.uuid4(), mode="full", config_version=1)
            before = measure()
            chunks = 0
            while True:
                chunks += 1
                result = await engine.run_chunk(merchant, job_id, STAMP, args.chunk)
                if result.finished:
                    break
            apply = spent(before, args.customers)
            job = await engine.get(merchant, job_id)
            assert job is not None
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
                events = await conn.fetchval(
                    "SELECT count(*) FROM outbox_events WHERE merchant_id = $1 AND payload->>'job_id' = $2",
                    merchant,
                    str(job_id),
                )
        finally:
            await pool.close()
    return {
        "customers": args.customers,
        "chunk": args.chunk,
        "workers": args.workers,
        "seed_s": round(seed_s, 1),
        "preview": {**preview, "customers": matrix.customers, "moving": matrix.moved(),
                    "up": matrix.moved("up"), "down": matrix.moved("down")},
        "apply": {**apply, "chunks": chunks, "state": job.state, "customers_done": job.customers_done,
                  "moved": job.moved, "events_in_outbox": int(events)},
        "load_average": os.getloadavg(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=20_000, help="customers per apply chunk (preview: twice)")
    parser.add_argument("--workers", type=int, default=2, help="key ranges the preview reads at once")
    args = parser.parse_args()
    r = asyncio.run(run(args))
    p, a = r["preview"], r["apply"]
    print(
        f"seed     {r['customers']} customers in {r['seed_s']} s\n"
        f"preview  {p['customers']} customers ({p['moving']} would move: {p['up']} up, {p['down']} down)"
        f" in {p['wall_s']} s; CPU service {p['service_cpu_s']} s, PostgreSQL {p['postgres_cpu_s']} s"
        f" ({p['postgres_cpu_us_per_customer']} us/customer)\n"
        f"apply    {a['customers_done']} customers, {a['moved']} moved, {a['events_in_outbox']} events in the outbox,"
        f" {a['chunks']} chunks, state {a['state']}, in {a['wall_s']} s; CPU service {a['service_cpu_s']} s,"
        f" PostgreSQL {a['postgres_cpu_s']} s ({a['postgres_cpu_us_per_customer']} us/customer)\n"
        f"load average {r['load_average'][0]:.1f}"
    )
    save_result("tier_change", r)


if __name__ == "__main__":
    main()
