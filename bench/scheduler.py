"""Deadline scheduler at scale: 1,000,000 due customers over 10,000 merchants re-assessed in one pass.

Seeds a fresh database as the superuser with COPY (3 tiers per merchant, a calendar_year /
to_qualified programme each, every customer on gold with the 2026 period ended, a quarter of them
with 2026 points that keep gold, a quarter that reach silver only, the rest nothing), then runs one
scheduler pass in-process as the service role (RLS on) with the clock at 2027-01-02 and reports
customers re-assessed per second, moves, and the CPU of this process and of PostgreSQL.
Writes bench/results/scheduler.json.

    .venv/bin/python -m bench.scheduler [--merchants 10000] [--customers 1000000] [--chunk 5000] [--replicas 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from datetime import UTC, date, datetime
from typing import Any

import asyncpg

from bench.harness import ROOT, fresh_database, services
from bench.points import cluster_cpu_seconds
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.events.scheduler import DeadlineScheduler, SchedulerSettings

PERIOD_END = datetime(2027, 1, 1, tzinfo=UTC)
NOW = datetime(2027, 1, 2, tzinfo=UTC)


async def seed(superuser_dsn: str, db_name: str, merchants: list[uuid.UUID], customers: int) -> None:
    conn = await asyncpg.connect(superuser_dsn, database=db_name)
    try:
        await conn.execute("SET session_replication_role = replica")  # no triggers while seeding
        await conn.copy_records_to_table("merchants", records=[(m,) for m in merchants], columns=["id"])
        tiers = []
        for m in merchants:
            tiers += [
                (m, "basic", "Basic", 0, True),
                (m, "silver", "Silver", 1000, False),
                (m, "gold", "Gold", 5000, False),
            ]
        await conn.copy_records_to_table(
            "vip_tiers", records=tiers, columns=["merchant_id", "tier_id", "name", "min_points", "is_default"]
        )
        await conn.copy_records_to_table(
            "tier_programs",
            records=[(m, "calendar_year", "UTC", "to_qualified", 1) for m in merchants],
            columns=["merchant_id", "window_kind", "time_zone", "downgrade_policy", "version"],
        )
        since = datetime(2026, 3, 1, tzinfo=UTC)
        step = 200_000
        for start in range(0, customers, step):
            rows, points = [], []
            for i in range(start, min(customers, start + step)):
                m, c = merchants[i % len(merchants)], uuid.uuid4()
                rows.append((m, c, "gold", since, "points.recorded", PERIOD_END, PERIOD_END, ["basic", "gold"], 1))
                if i % 4 == 0:
                    points.append((m, c, date(2026, 5, 1), 6000))
                elif i % 4 == 1:
                    points.append((m, c, date(2026, 5, 1), 1500))
            await conn.copy_records_to_table(
                "customer_tiers",
                records=rows,
                columns=[
                    "merchant_id", "customer_id", "tier_id", "assigned_at", "source", "period_end", "deadline",
                    "held_tiers", "program_version",
                ],
            )  # fmt: skip
            await conn.copy_records_to_table(
                "qualifying_points_daily", records=points, columns=["merchant_id", "customer_id", "day", "points"]
            )
        await conn.execute("SET session_replication_role = DEFAULT")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with services("postgres") as env:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        merchants = [uuid.uuid4() for _ in range(args.merchants)]
        t0 = time.monotonic()
        await seed(db.superuser_dsn, db.name, merchants, args.customers)
        seed_s = time.monotonic() - t0
        pool = await create_pool(
            db.app_dsn, min_size=args.replicas, max_size=args.replicas + 1, statement_timeout_ms=120_000
        )
        try:
            progression = PgProgression(pool)
            settings = SchedulerSettings(chunk_size=args.chunk, merchants_per_group=args.group)
            replicas = [DeadlineScheduler(progression, progression, settings) for _ in range(args.replicas)]
            cpu0, db0, t0 = time.process_time(), cluster_cpu_seconds(), time.monotonic()
            results = await asyncio.gather(*(r.run_once(NOW) for r in replicas))
            elapsed = time.monotonic() - t0
            cpu1, db1 = time.process_time(), cluster_cpu_seconds()
            remaining = await pool.fetchval("SELECT coalesce(sum(due), 0) FROM campaign_due_merchants($1, 100000)", NOW)
        finally:
            await pool.close()
    reassessed = sum(r.reassessed for r in results)
    return {
        "merchants": args.merchants,
        "customers": args.customers,
        "chunk": args.chunk,
        "group": args.group,
        "replicas": args.replicas,
        "seed_s": round(seed_s, 1),
        "pass_s": round(elapsed, 1),
        "reassessed": reassessed,
        "moved": sum(r.moved for r in results),
        "chunks": sum(r.chunks for r in results),
        "still_due": int(remaining),
        "per_s": reassessed / elapsed,
        "scheduler_cpu_s": round(cpu1 - cpu0, 1),
        "postgres_cpu_s": round(db1 - db0, 1) if db0 is not None and db1 is not None else None,
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=5000)
    parser.add_argument("--group", type=int, default=1000, help="merchants per transaction scope")
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    r = asyncio.run(run(args))
    print(
        f"seed {r['merchants']} merchants, {r['customers']} due customers in {r['seed_s']} s\n"
        f"pass  {r['reassessed']} re-assessed ({r['moved']} moved, {r['chunks']} chunks, {r['still_due']} still due)"
        f" in {r['pass_s']} s = {r['per_s']:.0f}/s; CPU scheduler {r['scheduler_cpu_s']} s,"
        f" PostgreSQL {r['postgres_cpu_s']} s (load average {r['load_average'][0]:.1f})"
    )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scheduler.json").write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
