"""How long the vip_tiers_total refresh query takes at 100k merchants (prints figures).

scripts/services up /tmp/bench-pg && . /tmp/bench-pg/env   (SERVICES=postgres is enough)
.venv/bin/python -m bench.tier_counts [merchants] [tiers_per_merchant]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid

import asyncpg
from tests.conftest import make_database

from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.tier_counts import fetch_tier_counts


async def main(merchants: int, tiers: int) -> None:
    db = await make_database(f"campaign_bench_{uuid.uuid4().hex[:8]}")
    su = await asyncpg.connect(os.environ["CAMPAIGN_TEST_PG_DSN"], database=db.name)
    try:
        start = time.perf_counter()
        # As the superuser (RLS does not apply): bulk rows, 1..tiers tiers per merchant.
        await su.execute("INSERT INTO merchants (id) SELECT gen_random_uuid() FROM generate_series(1, $1)", merchants)
        await su.execute(
            "INSERT INTO vip_tiers (merchant_id, tier_id, name, min_points)"
            " SELECT m.id, 't' || g, 'Tier ' || g, g * 100 FROM merchants m,"
            " LATERAL generate_series(1, 1 + (abs(hashtext(m.id::text)) % $1)) g",
            tiers,
        )
        await su.execute("ANALYZE vip_tiers")
        rows = await su.fetchval("SELECT count(*) FROM vip_tiers")
        print(f"seeded {merchants} merchants, {rows} tiers in {time.perf_counter() - start:.1f} s")
    finally:
        await su.close()
    pool = await create_pool(db.relay_dsn, min_size=1, max_size=1)
    try:
        timings = []
        for _ in range(7):
            t0 = time.perf_counter()
            top, other = await fetch_tier_counts(pool, 50)
            timings.append(time.perf_counter() - t0)
        print(f"campaign_tier_counts(50) as campaign_relay: {len(top)} + 1 series, other={other}")
        print(f"  median {statistics.median(timings) * 1000:.0f} ms, max {max(timings) * 1000:.0f} ms over 7 runs")
    finally:
        await pool.close()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [100_000, 6][len(args) :])))
