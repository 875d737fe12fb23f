"""kill -9 of a scheduler process while a chunk is in flight, on the real database: the killed
chunk's transaction is gone (its locks, moves, history and outbox rows with it), and after a
restart every due customer is re-assessed exactly once: no duplicate history row, no duplicate
`vip_tier.assigned` event, no customer missed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from typing import Any

from campaign_service.domain.tiers import TierSpec
from tests.integration.test_deadline_scheduler import JAN_2027, JAN_2028, scheduler
from tests.integration.test_points_recorded import announced, entry, handler, history, tier_of

CHUNK = 7


async def start(database: Any, pause_at: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.scheduler_process", database.app_dsn, JAN_2028.isoformat(),
        str(CHUNK), str(pause_at), stdout=asyncio.subprocess.PIPE, env={**os.environ},
    )  # fmt: skip


async def ladder_merchant(own: Any) -> uuid.UUID:
    """A merchant of the test's own database with basic < silver < gold and a calendar-year,
    to_qualified programme."""
    merchant: uuid.UUID = await own.merchant()
    for tier_id, name, points in (("basic", "Basic", 0), ("silver", "Silver", 1000), ("gold", "Gold", 5000)):
        await own.tiers.create(merchant, tier_id, TierSpec(name=name, min_points=points, is_default=not points))
    await own.su.execute(
        "INSERT INTO tier_programs (merchant_id, window_kind, downgrade_policy, version)"
        " VALUES ($1, 'calendar_year', 'to_qualified', 2)",
        merchant,
    )
    return merchant


async def test_a_scheduler_killed_mid_chunk_loses_and_duplicates_nothing_after_restart(own_db: Any) -> None:
    """(A database of its own: the process re-assesses every merchant's due customers.)"""
    app_pool, superuser_conn, database = own_db.pool, own_db.su, own_db.db
    merchants = [await ladder_merchant(own_db) for _ in range(2)]
    customers = [(m, uuid.uuid4()) for m in merchants for _ in range(20)]
    await handler(app_pool).batch([entry(m, c, 5200) for m, c in customers])
    await scheduler(app_pool).run_once(JAN_2027)  # kept on 2026's points; due again at JAN_2028

    victim = await start(database, pause_at=3)  # two chunks commit, the third is in flight
    assert victim.stdout is not None
    line = b""
    while line.strip() != b"IN-FLIGHT":  # (log lines come first)
        line = await asyncio.wait_for(victim.stdout.readline(), 60)
        assert line, "the scheduler process ended before its third chunk"
    in_flight = await superuser_conn.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE a.datname = current_database() AND a.state = 'idle in transaction'"
        " AND l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'"
    )
    assert in_flight == 1  # the chunk's transaction is open, its writes uncommitted
    victim.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(victim.wait(), 30) == -signal.SIGKILL

    moved = [(m, c) for m, c in customers if await tier_of(superuser_conn, m, c) == "basic"]
    assert len(moved) == 2 * CHUNK  # the committed chunks only
    for _ in range(100):  # the server notices the dead connection and rolls its transaction back
        if not await superuser_conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'"
        ):
            break
        await asyncio.sleep(0.1)

    restarted = await start(database, pause_at=0)
    out, _ = await asyncio.wait_for(restarted.communicate(), 120)
    assert restarted.returncode == 0
    [done] = [line.split() for line in out.splitlines() if line.startswith(b"DONE")]
    rest = str(len(customers) - 2 * CHUNK).encode()
    assert done == [b"DONE", rest, rest]  # the killed chunk's customers were due again, and only they
    for m, c in customers:
        assert await tier_of(superuser_conn, m, c) == "basic"
        assert [h[:4] for h in await history(superuser_conn, m, c)] == [
            (None, "gold", "initial", "threshold_reached"),
            ("gold", "basic", "down", "period_end"),
        ]
        events = await announced(superuser_conn, m, c)
        assert [(e["previous_tier_id"], e["tier_id"]) for e in events] == [(None, "gold"), ("gold", "basic")]
    assert (await scheduler(app_pool).run_once(JAN_2028)).reassessed == 0  # nobody left due
