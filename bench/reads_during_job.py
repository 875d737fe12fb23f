"""GetVIPTier throughput while a re-assessment job of 1,000,000 customers runs, against the same
service idle, in one run (issue 14: reads stay within 10 % of their usual throughput).

One service process (Redis cache, authentication, the shared rate limiter with a limit never
reached) pinned to one core, ghz on the other, PostgreSQL unpinned (it is what the job loads).
The service's own job runner runs the job, as in production (every replica runs it). Seeds, as
the superuser, a merchant with 10 tiers for the reads (bench.grpc_suite) and another with N
customers for the job (bench.tier_change: 20 % move in `full`). Then:
  idle    ghz for --seconds, closed loop (throughput) and paced at --rate (p50/p99), with the
          service's CPU per request and PostgreSQL's CPU (all its processes) per window;
  job     the job's ladder stored and the job enqueued (`full`); once the runner has started it,
          the same two windows while it runs, plus the customers per second the job did in each
          (the job must still be running at a window's end: the row says);
  after   the job's rate with no reads (to its end), then idle closed loop again (how much the
          machine's load drifted over the run).
Ratios: closed-loop throughput while the job runs over the mean of the two idle ones; p99 at
the paced rate while it runs over idle. On 2 cores the job's PostgreSQL backend competes with
ghz and the service for CPU: a closed loop that fills both cores starves the job (its
customers/s in that window shows it), the paced window shows the shared case. Writes bench/results/reads_during_job.json.

    .venv/bin/python -m bench.reads_during_job [--customers 1000000] [--seconds 10] [--concurrency 32] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.tokens import mint_token

from bench.grpc_suite import SERVER_CORE, UNLIMITED, Scenario, ghz, ghz_binary, redis_env, seed, service_env
from bench.harness import auth_env, free_port, fresh_database, save_result, services, start
from bench.lookup import cpu_seconds
from bench.points import cluster_cpu_seconds
from bench.tier_change import NEW
from bench.tier_change import seed as seed_customers
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.postgres.tier_change_jobs import PgTierChangeEngine
from campaign_service.domain.tier_changes import TierChangeJob


async def job_state(engine: PgTierChangeEngine, merchant: uuid.UUID, job_id: uuid.UUID) -> TierChangeJob:
    job = await engine.get(merchant, job_id)
    assert job is not None
    return job


Window = tuple[dict[str, Any], float, float | None, float]


def window(binary: str, port: int, scenario: Scenario, pid: int, args: argparse.Namespace, rps: int | None) -> Window:
    """One ghz run (closed loop when `rps` is None, else paced): (report, service CPU s,
    PostgreSQL CPU s, wall s)."""
    cpu, pg, wall = cpu_seconds(pid), cluster_cpu_seconds(), time.monotonic()
    concurrency = args.concurrency if rps is None else 8
    report = ghz(binary, port, scenario, seconds=args.seconds, concurrency=concurrency, rps=rps)
    pg1 = cluster_cpu_seconds()
    return report, cpu_seconds(pid) - cpu, None if pg is None or pg1 is None else pg1 - pg, time.monotonic() - wall


def row(w: Window) -> dict[str, Any]:
    report, cpu, pg, wall = w
    n = max(1, report["count"])
    return {
        "rps": round(report["rps"], 1),
        "p50_ms": round(report["p50_ms"], 2),
        "p99_ms": round(report["p99_ms"], 2),
        "errors": report["errors"],
        "codes": report["codes"],
        "service_cpu_us_per_request": round(cpu / n * 1e6, 1),
        "service_cpu_share": round(cpu / wall, 3),
        "postgres_cpu_s": None if pg is None else round(pg, 2),
        "wall_s": round(wall, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    binary = ghz_binary()
    rows: dict[str, dict[str, Any]] = {}
    with services("postgres redis") as env, tempfile.TemporaryDirectory() as tmp:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        reader = await seed(db)
        job_merchant = uuid.uuid4()
        t0 = time.monotonic()
        await seed_customers(db.superuser_dsn, db.name, job_merchant, args.customers)
        seed_s = time.monotonic() - t0
        port = free_port()
        extra = {
            **auth_env(Path(tmp)),
            **redis_env(env),
            **UNLIMITED,
            "CAMPAIGN_TIER_CHANGE_JOBS_INTERVAL_S": "0.2",
            "CAMPAIGN_TIER_CHANGE_JOBS_CHUNK_SIZE": str(args.chunk),
        }
        proc = start(
            [sys.executable, "-m", "campaign_service", "serve"],
            port=port,
            core=SERVER_CORE,
            env=service_env(db, env, port, extra),
            log=Path(tmp, "service.log"),
        )
        pool = await create_pool(db.app_dsn, min_size=1, max_size=2)
        engine = PgTierChangeEngine(pool)
        token = mint_token(reader, ["tiers:read"], "bench", ttl_s=3600)
        scenario = Scenario(
            "GetVIPTier", "", "GetVIPTier", {"merchant_id": str(reader), "tier_id": "gold", "locale": "ar"},
            {"authorization": f"Bearer {token}"},
        )  # fmt: skip
        pid = proc.proc.pid
        try:
            ghz(binary, port, scenario, seconds=5, concurrency=args.concurrency, rps=None)  # warm-up, fills
            rows["idle, closed loop"] = row(window(binary, port, scenario, pid, args, None))
            rows[f"idle, {args.rate}/s"] = row(window(binary, port, scenario, pid, args, args.rate))

            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(job_merchant))
                for tier, mp in NEW.items():
                    await conn.execute(
                        "UPDATE vip_tiers SET min_points = $3 WHERE merchant_id = $1 AND tier_id = $2",
                        job_merchant, tier, mp,
                    )  # fmt: skip
            async with PgUnitOfWork(pool)(job_merchant) as work:
                job_id = await work.tier_change_jobs.enqueue(uuid.uuid4(), mode="full", config_version=1)
            started = time.monotonic()
            while (await job_state(engine, job_merchant, job_id)).customers_done == 0:
                if time.monotonic() - started > 120:
                    sys.exit("the service's job runner did not start the job in 120 s")
                await asyncio.sleep(0.05)
            for name, rate in (("job running, closed loop", None), (f"job running, {args.rate}/s", args.rate)):
                before = await job_state(engine, job_merchant, job_id)
                r = row(window(binary, port, scenario, pid, args, rate))
                after = await job_state(engine, job_merchant, job_id)
                r["job_customers_per_s"] = round((after.customers_done - before.customers_done) / r["wall_s"])
                r["job_running_at_end"] = after.state == "running"
                rows[name] = r
            quiet_from = await job_state(engine, job_merchant, job_id)
            quiet_started = time.monotonic()
            while (await job_state(engine, job_merchant, job_id)).state not in ("done", "failed"):
                await asyncio.sleep(0.2)
            final = await job_state(engine, job_merchant, job_id)
            quiet_s = time.monotonic() - quiet_started
            job_wall = time.monotonic() - started
            # Idle again after the job: the drift of the machine's load over the run shows.
            rows["idle after the job, closed loop"] = row(window(binary, port, scenario, pid, args, None))
        finally:
            await pool.close()
            proc.stop()

    idle_rps = (rows["idle, closed loop"]["rps"] + rows["idle after the job, closed loop"]["rps"]) / 2
    job_rps = rows["job running, closed loop"]["rps"]
    idle_p99 = rows[f"idle, {args.rate}/s"]["p99_ms"]
    return {
        "customers": args.customers,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "seed_s": round(seed_s, 1),
        "windows": rows,
        "throughput_ratio": round(job_rps / idle_rps, 3) if idle_rps else None,
        "paced_p99_ratio": round(rows[f"job running, {args.rate}/s"]["p99_ms"] / idle_p99, 3) if idle_p99 else None,
        "job": {
            "state": final.state, "customers_done": final.customers_done, "moved": final.moved,
            "wall_s_from_enqueue": round(job_wall, 1),
            "customers_per_s_without_reads": round((final.customers_done - quiet_from.customers_done) / quiet_s)
            if quiet_s > 0.5 else None,
        },
        "load_average": os.getloadavg(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=int, default=500, help="requests/s of the paced windows")
    parser.add_argument("--chunk", type=int, default=20_000, help="customers per job chunk (the service's setting)")
    args = parser.parse_args()
    r = asyncio.run(run(args))
    for name, x in r["windows"].items():
        job = (
            f"  job {x['job_customers_per_s']} customers/s (running at the end: {x['job_running_at_end']})"
            if "job_customers_per_s" in x
            else ""
        )
        print(
            f"{name:<32} {x['rps']:>7.0f} rps  p50 {x['p50_ms']:6.2f} ms  p99 {x['p99_ms']:7.2f} ms"
            f"  service CPU {x['service_cpu_us_per_request']:4.0f} us/req ({x['service_cpu_share']:.2f} core)"
            f"  PostgreSQL CPU {x['postgres_cpu_s']} s  codes {x['codes']}{job}"
        )
    j = r["job"]
    print(
        f"closed-loop throughput while the job runs / mean of the idle ones: {r['throughput_ratio']};"
        f" p99 at {r['rate']}/s while it runs / idle: {r['paced_p99_ratio']}\n"
        f"job {j['state']}: {j['customers_done']} customers, {j['moved']} moved, {j['wall_s_from_enqueue']} s from"
        f" enqueue; {j['customers_per_s_without_reads']} customers/s with no reads running; load average"
        f" {r['load_average'][0]:.1f}"
    )
    save_result("reads_during_job", r)


if __name__ == "__main__":
    main()
