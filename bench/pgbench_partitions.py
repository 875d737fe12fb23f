"""Partition and RLS cost of the tier lookup query, measured with pgbench.

For 1, 1,000 and 100,000 merchants x 10 tiers, runs the GetVIPTier query (the same statement
the service runs: set_config + tier row + translations) against the hash-partitioned `vip_tiers`
and against an unpartitioned copy with the same indexes and policy, each both as the service
role (RLS applies) and as a superuser (RLS bypassed). Prints transactions/s and mean latency
side by side, and writes bench/results/pgbench_partitions.json.

Usage (starts its own PostgreSQL on loopback unless CAMPAIGN_TEST_PG_DSN is set):
    .venv/bin/python -m bench.pgbench_partitions [--seconds 5] [--clients 4] [--sizes 1,1000,100000]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import asyncpg

from campaign_service.adapters.postgres import migrations
from campaign_service.adapters.postgres.provision import provision

ROOT = Path(__file__).resolve().parent.parent
TIERS = ["bronze", "silver", "gold", "platinum", "diamond", "t6", "t7", "t8", "t9", "t10"]

FLAT_TABLE = """
CREATE TABLE IF NOT EXISTS vip_tiers_flat (LIKE vip_tiers INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
CREATE UNIQUE INDEX IF NOT EXISTS vip_tiers_flat_key ON vip_tiers_flat (merchant_id, tier_id);
CREATE INDEX IF NOT EXISTS vip_tiers_flat_min_points ON vip_tiers_flat (merchant_id, min_points);
ALTER TABLE vip_tiers_flat ENABLE ROW LEVEL SECURITY;
ALTER TABLE vip_tiers_flat FORCE ROW LEVEL SECURITY;
DO $$ BEGIN
    CREATE POLICY tenant_isolation ON vip_tiers_flat TO campaign_app
        USING (merchant_id = campaign_current_merchant());
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT SELECT ON vip_tiers_flat TO campaign_app;
"""

LOOKUP = """\\set m random(1, {n})
BEGIN;
SELECT set_config('app.merchant_id', md5(:m::text)::uuid::text, true);
SELECT t.id, t.name, t.locale, t.min_points, t.discount_percentage, t.free_shipping, t.exclusive_access,
       t.benefits, t.is_default, t.version, t.created_at, t.updated_at,
       coalesce((SELECT jsonb_object_agg(tr.locale, tr.name) FROM vip_tier_translations tr
                 WHERE tr.merchant_id = t.merchant_id AND tr.tier_id = t.tier_id), '{{}}'::jsonb)
  FROM {table} t WHERE t.merchant_id = md5(:m::text)::uuid AND t.tier_id = 'gold';
COMMIT;
"""


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        sys.exit(f"{name} not found: install Debian's postgresql package (scripts/services does)")
    return found[-1]


async def load(superuser_dsn: str, db: str, merchants: int) -> None:
    conn = await asyncpg.connect(superuser_dsn, database=db)
    try:
        await conn.execute("TRUNCATE merchants, vip_tiers, vip_tiers_flat, vip_tier_translations CASCADE")
        await conn.execute(
            "INSERT INTO merchants (id) SELECT md5(g::text)::uuid FROM generate_series(1, $1) g", merchants
        )
        await conn.execute(
            "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points, benefits)"
            " SELECT md5(g::text)::uuid, tiers.tier_id, initcap(tiers.tier_id), tiers.ord * 1000,"
            " jsonb_build_object('bonus_points', tiers.ord * 10, 'custom_perks', '[]'::jsonb)"
            " FROM generate_series(1, $1) g, unnest($2::text[]) WITH ORDINALITY AS tiers(tier_id, ord)",
            merchants,
            TIERS,
        )
        await conn.execute("INSERT INTO vip_tiers_flat SELECT * FROM vip_tiers")
        await conn.execute(
            "INSERT INTO vip_tier_translations (merchant_id, tier_id, locale, name)"
            " SELECT merchant_id, tier_id, 'ar', 'ذهبي' FROM vip_tiers WHERE tier_id = 'gold'"
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def pgbench(dsn: str, script: Path, seconds: int, clients: int) -> dict[str, float]:
    out = subprocess.run(
        [
            pg_bin("pgbench"),
            "-n",
            "-M",
            "prepared",
            "-T",
            str(seconds),
            "-c",
            str(clients),
            "-j",
            "1",
            "-f",
            str(script),
            dsn,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,
    ).stdout
    tps = next(float(line.split("=")[1].split()[0]) for line in out.splitlines() if line.startswith("tps"))
    latency = next(float(line.split("=")[1].split()[0]) for line in out.splitlines() if "latency average" in line)
    return {"tps": tps, "latency_ms": latency}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sizes", default="1,1000,100000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    superuser = os.environ.get("CAMPAIGN_TEST_PG_DSN")
    state = None
    if not superuser:
        state = tempfile.mkdtemp(prefix="campaign-pgbench.")
        os.chmod(state, 0o755)
        subprocess.run(
            [str(ROOT / "scripts/services"), "up", state], check=True, env={**os.environ, "SERVICES": "postgres"}
        )
        superuser = next(
            line.split("=", 1)[1].strip()
            for line in Path(state, "env").read_text().splitlines()
            if "CAMPAIGN_TEST_PG_DSN" in line
        )
    try:
        u = urlparse(superuser)
        db = "campaign_pgbench"
        await provision(superuser, db)
        owner = f"postgresql://campaign_owner@{u.hostname}:{u.port}/{db}"
        conn = await asyncpg.connect(owner)
        try:
            await migrations.migrate(conn)
            await conn.execute(FLAT_TABLE)
        finally:
            await conn.close()
        dsns = {
            "service role (RLS)": f"postgresql://campaign_app@{u.hostname}:{u.port}/{db}",
            "superuser (no RLS)": f"postgresql://{u.username}@{u.hostname}:{u.port}/{db}",
        }
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                await load(superuser, db, n)
                for table in ("vip_tiers", "vip_tiers_flat"):
                    script = Path(tmp, f"{table}-{n}.sql")
                    script.write_text(LOOKUP.format(n=n, table=table))
                    for who, dsn in dsns.items():
                        r = pgbench(dsn, script, args.seconds, args.clients)
                        row = {"merchants": n, "table": table, "role": who, **r}
                        results.append(row)
                        print(
                            f"{n:>7} merchants  {table:<15} {who:<19} {r['tps']:>9.0f} tps  {r['latency_ms']:.3f} ms",
                            flush=True,
                        )
        print()
        print(
            f"{'merchants':>9} | {'partitioned RLS':>15} | {'flat RLS':>9} | {'partitioned no-RLS':>18} | {'flat no-RLS':>11}  (tps)"
        )
        for n in sizes:
            cells = {(r["table"], r["role"]): r["tps"] for r in results if r["merchants"] == n}
            print(
                f"{n:>9} | {cells[('vip_tiers', 'service role (RLS)')]:>15.0f} | {cells[('vip_tiers_flat', 'service role (RLS)')]:>9.0f}"
                f" | {cells[('vip_tiers', 'superuser (no RLS)')]:>18.0f} | {cells[('vip_tiers_flat', 'superuser (no RLS)')]:>11.0f}"
            )
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "pgbench_partitions.json").write_text(json.dumps(results, indent=2))
    finally:
        if state:
            subprocess.run([str(ROOT / "scripts/services"), "down", state], check=False)


if __name__ == "__main__":
    asyncio.run(main())
