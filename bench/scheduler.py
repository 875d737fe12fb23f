"""Deadline scheduler at scale: 1,000,000 due customers over 10,000 merchants re-assessed in one pass.

Seeds a fresh database as the superuser in SQL (3 tiers per merchant, a calendar_year /
to_qualified programme each, every customer on gold with the 2026 period ended, a quarter of them
with 2026 points that keep gold, a quarter that reach silver only, the rest nothing: 75% move),
then runs one scheduler pass in-process as the service role (RLS on) with the clock at 2027-01-02
and reports wall time, customers re-assessed per second, moves, the CPU of this process and of
PostgreSQL per customer, and (--explain) EXPLAIN (ANALYZE, BUFFERS) of one chunk per step (run
in a transaction rolled back before the pass). --compare runs the same pass with the chunk
statement of main before migration 0023 (bench/scheduler_legacy.py) on a second copy of the
same seeded database, one after the other, and prints the same-run ratio.
Writes bench/results/scheduler.json.

    .venv/bin/python -m bench.scheduler [--merchants 10000] [--customers 1000000] [--chunk N]
        [--concurrency N] [--replicas 1] [--explain] [--compare] [--template NAME]

--template NAME keeps the seeded database as template NAME and reuses it on later runs with the
same NAME (a copy per run: no reseeding while iterating).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import asyncpg
from tests.databases import ProvisionedDatabase

from bench.harness import fresh_database, save_result, services
from bench.points import cluster_cpu_seconds
from bench.scheduler_legacy import LEGACY_REASSESS
from campaign_service.adapters.postgres import migrations, reassessment
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.domain.events import VIP_TIER_ASSIGNED
from campaign_service.events.scheduler import DeadlineScheduler, SchedulerSettings
from campaign_service.service.progression import millis

NOW = datetime(2027, 1, 2, tzinfo=UTC)

_SEED = [
    "SET session_replication_role = replica",  # no triggers while seeding (no history rows)
    "INSERT INTO merchants (id) SELECT gen_random_uuid() FROM generate_series(1, {merchants})",
    "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points, is_default)"
    " SELECT m.id, t.tier_id, t.name, t.min_points, t.d FROM merchants m,"
    " (VALUES ('basic', 'Basic', 0, true), ('silver', 'Silver', 1000, false), ('gold', 'Gold', 5000, false))"
    " AS t(tier_id, name, min_points, d)",
    "INSERT INTO tier_programs (merchant_id, window_kind, time_zone, downgrade_policy, version)"
    " SELECT id, 'calendar_year', 'UTC', 'to_qualified', 1 FROM merchants",
    "CREATE TEMP TABLE seed AS SELECT i, x.ms[1 + i % x.n] AS m, gen_random_uuid() AS c"
    " FROM generate_series(0, {customers} - 1) AS i, (SELECT array_agg(id) AS ms, count(*)::int AS n FROM merchants) x",
    "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, assigned_at, source, period_end, deadline,"
    " held_tiers, program_version)"
    " SELECT m, c, 'gold', '2026-03-01T00:00:00Z', 'points.recorded', '2027-01-01T00:00:00Z',"
    " '2027-01-01T00:00:00Z', ARRAY['basic', 'gold'], 1 FROM seed ORDER BY m, c",
    "INSERT INTO qualifying_points_daily (merchant_id, customer_id, day, points)"
    " SELECT m, c, '2026-05-01', CASE WHEN i % 4 = 0 THEN 6000 ELSE 1500 END FROM seed WHERE i % 4 IN (0, 1)",
    "DROP TABLE seed",
    "SET session_replication_role = DEFAULT",
    "VACUUM ANALYZE",
]


async def seed(db: ProvisionedDatabase, merchants: int, customers: int) -> None:
    conn = await asyncpg.connect(db.superuser_dsn, database=db.name)
    try:
        for statement in _SEED:
            await conn.execute(statement.format(merchants=int(merchants), customers=int(customers)))
    finally:
        await conn.close()


async def seeded_copy(superuser_dsn: str, args: argparse.Namespace) -> tuple[ProvisionedDatabase, float]:
    """A seeded database: a copy of the template when it exists, else seeded now (and kept as the
    template when one is named). (database, seconds spent seeding)"""
    admin = await asyncpg.connect(superuser_dsn)
    try:
        template = args.template
        if template and await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", template):
            name = f"campaign_bench_{uuid.uuid4().hex[:8]}"
            t0 = time.monotonic()
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            db = ProvisionedDatabase(superuser_dsn, name)
            owner = await asyncpg.connect(db.owner_dsn)
            try:
                await migrations.migrate(owner)  # a template seeded before a new migration
            finally:
                await owner.close()
            return db, time.monotonic() - t0
        db = await fresh_database(superuser_dsn)
        t0 = time.monotonic()
        await seed(db, args.merchants, args.customers)
        seconds = time.monotonic() - t0
        if template:
            await admin.execute(f'CREATE DATABASE "{template}" TEMPLATE "{db.name}"')
        return db, seconds
    finally:
        await admin.close()


async def drop(superuser_dsn: str, db: ProvisionedDatabase) -> None:
    admin = await asyncpg.connect(superuser_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
    finally:
        await admin.close()


async def legacy_reassess_due(
    conn: Any, merchants: Any, at: datetime, stamp: datetime, limit: int, after: Any
) -> tuple[int, Any, list[tuple[str, str, int]]]:
    """reassessment.reassess_due as it was at 97ec1b8 (one statement, LEGACY_REASSESS)."""
    first, last = min(merchants), max(merchants)
    after_m, after_c = after if after is not None else (first, uuid.UUID(int=0))
    rows = await conn.fetch(LEGACY_REASSESS, at, limit, after_m, after_c, last, stamp, VIP_TIER_ASSIGNED)
    claimed = sum(int(r["n"]) for r in rows)
    if not claimed:
        return 0, None, []
    last_key = next((r["last_m"], r["last_c"]) for r in rows if r["last_m"] is not None)
    return claimed, last_key, [(r["dir"], r["reason"], int(r["n"])) for r in rows if r["dir"] is not None]


@contextlib.contextmanager
def statement(legacy: bool) -> Iterator[None]:
    if not legacy:
        yield
        return
    with mock.patch.object(reassessment, "reassess_due", legacy_reassess_due):
        yield


def _nodes(plan: dict[str, Any], depth: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    yield depth, plan
    for child in plan.get("Plans", []):
        yield from _nodes(child, depth + 1)


async def explain(
    pool: asyncpg.Pool[asyncpg.Record], merchants: list[uuid.UUID], chunk: int, legacy: bool
) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of one chunk of the first group, rolled back: the nodes that
    took ≥ 2% of the statement, inclusive ms and ms per claimed customer, and the triggers."""
    if legacy:
        first, last = min(merchants), max(merchants)
        sql_args: tuple[Any, ...] = (
            LEGACY_REASSESS,
            NOW,
            chunk,
            first,
            uuid.UUID(int=0),
            last,
            millis(NOW),
            VIP_TIER_ASSIGNED,
        )
    else:
        sql_args = reassessment.chunk_statement(merchants, NOW, millis(NOW), chunk, None)
    sql, *params = sql_args
    scope = json.dumps(dict.fromkeys(map(str, sorted(merchants)), True))
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("SELECT set_config('app.merchant_ids', $1, true), set_config('jit', 'off', true)", scope)
            if not legacy:
                await conn.execute(reassessment._PLAN_FOR_CHUNKS)
            [[raw]] = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *params)
        finally:
            await tx.rollback()
    doc = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    total = float(doc["Execution Time"])
    n = chunk
    lines = [f"explain: one chunk of {n} customers: {total:.0f} ms = {total / n:.4f} ms/customer (execution)"]
    for depth, node in _nodes(doc["Plan"]):
        ms = float(node.get("Actual Total Time", 0)) * float(node.get("Actual Loops", 1))
        if ms < 0.02 * total:
            continue
        label = node["Node Type"]
        for key in ("Subplan Name", "Relation Name", "CTE Name", "Operation", "Index Name"):
            if key in node:
                label += f" {node[key]}"
        hit, read = node.get("Shared Hit Blocks", 0), node.get("Shared Read Blocks", 0)
        lines.append(f"  {'  ' * depth}{label}: {ms:.0f} ms ({ms / n:.4f} ms/customer, buffers hit {hit} read {read})")
    for trigger in doc.get("Triggers", []):
        ms = float(trigger["Time"])
        lines.append(f"  trigger {trigger['Trigger Name']}: {ms:.0f} ms ({ms / n:.4f} ms/customer)")
    return lines


async def one_pass(db: ProvisionedDatabase, args: argparse.Namespace, legacy: bool) -> dict[str, Any]:
    connections = args.replicas * args.concurrency
    pool = await create_pool(db.app_dsn, min_size=connections, max_size=connections + 1, statement_timeout_ms=120_000)
    try:
        explained: list[str] = []
        if args.explain:
            group = sorted(
                await pool.fetchval("SELECT array_agg(merchant_id) FROM campaign_due_merchants($1, 100000)", NOW)
            )
            explained = await explain(pool, group[: args.group], args.chunk, legacy)
        progression = PgProgression(pool)
        settings = SchedulerSettings(
            chunk_size=args.chunk, merchants_per_group=args.group, concurrency=args.concurrency
        )
        replicas = [DeadlineScheduler(progression, progression, settings) for _ in range(args.replicas)]
        with statement(legacy):
            cpu0, db0, t0 = time.process_time(), cluster_cpu_seconds(), time.monotonic()
            results = await asyncio.gather(*(r.run_once(NOW) for r in replicas))
            elapsed = time.monotonic() - t0
            cpu1, db1 = time.process_time(), cluster_cpu_seconds()
        remaining = await pool.fetchval("SELECT coalesce(sum(due), 0) FROM campaign_due_merchants($1, 100000)", NOW)
    finally:
        await pool.close()
    reassessed = sum(r.reassessed for r in results)
    pg_s = round(db1 - db0, 1) if db0 is not None and db1 is not None else None
    return {
        "sql": "legacy (97ec1b8)" if legacy else "current",
        "pass_s": round(elapsed, 1),
        "reassessed": reassessed,
        "moved": sum(r.moved for r in results),
        "chunks": sum(r.chunks for r in results),
        "still_due": int(remaining),
        "per_s": round(reassessed / elapsed),
        "scheduler_cpu_s": round(cpu1 - cpu0, 1),
        "scheduler_cpu_ms_per_customer": round(1000 * (cpu1 - cpu0) / max(reassessed, 1), 4),
        "postgres_cpu_s": pg_s,
        "postgres_cpu_ms_per_customer": round(1000 * pg_s / max(reassessed, 1), 4) if pg_s is not None else None,
        "load_average": os.getloadavg(),
        "explain": explained,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with services("postgres") as env:
        dsn = env["CAMPAIGN_TEST_PG_DSN"]
        passes = []
        for legacy in [True, False] if args.compare else [False]:
            db, seed_s = await seeded_copy(dsn, args)
            try:
                passes.append({"seed_s": round(seed_s, 1), **await one_pass(db, args, legacy)})
            finally:
                await drop(dsn, db)
    return {
        "merchants": args.merchants,
        "customers": args.customers,
        "chunk": args.chunk,
        "group": args.group,
        "concurrency": args.concurrency,
        "replicas": args.replicas,
        "passes": passes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=SchedulerSettings.chunk_size)
    parser.add_argument("--group", type=int, default=SchedulerSettings.merchants_per_group, help="merchants per scope")
    parser.add_argument("--concurrency", type=int, default=SchedulerSettings.concurrency, help="chunks at once")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--explain", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS) one chunk first")
    parser.add_argument("--compare", action="store_true", help="also run the legacy statement, same seed")
    parser.add_argument("--template", help="keep/reuse the seeded database as this template")
    args = parser.parse_args()
    r = asyncio.run(run(args))
    print(
        f"{r['merchants']} merchants, {r['customers']} due customers; chunk {r['chunk']}, group {r['group']},"
        f" concurrency {r['concurrency']}, replicas {r['replicas']}"
    )
    for p in r["passes"]:
        print("\n".join(p["explain"]))
        print(
            f"[{p['sql']}] seed/copy {p['seed_s']} s; pass {p['reassessed']} re-assessed ({p['moved']} moved,"
            f" {p['chunks']} chunks, {p['still_due']} still due) in {p['pass_s']} s = {p['per_s']}/s;"
            f" CPU scheduler {p['scheduler_cpu_ms_per_customer']} ms/customer,"
            f" PostgreSQL {p['postgres_cpu_s']} s = {p['postgres_cpu_ms_per_customer']} ms/customer"
            f" (load average {p['load_average'][0]:.1f})"
        )
    if len(r["passes"]) == 2:
        old, new = r["passes"]
        ratio = old["pass_s"] / new["pass_s"]
        pg = (
            old["postgres_cpu_s"] / new["postgres_cpu_s"]
            if old["postgres_cpu_s"] and new["postgres_cpu_s"]
            else float("nan")
        )
        print(f"same run: current is {ratio:.2f}x faster in wall time, {pg:.2f}x less PostgreSQL CPU than legacy")
    save_result("scheduler", r)


if __name__ == "__main__":
    main()
