"""A scheduler process for the kill -9 test: one pass of the real DeadlineScheduler (PgProgression,
the service role, RLS on) at a given clock, one chunk at a time. With a pause chunk N, chunk N's
statement runs (claimed rows locked, moves, history and outbox rows written, uncommitted), then the
process prints IN-FLIGHT and waits inside that transaction to be killed.

    python -m tests.integration.scheduler_process DSN AT_ISO CHUNK_SIZE [PAUSE_AT_CHUNK]
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from typing import Any

from campaign_service.adapters.postgres import reassessment
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.events.scheduler import DeadlineScheduler, SchedulerSettings


async def main(dsn: str, at: datetime, chunk: int, pause_at: int) -> None:
    real = reassessment.reassess_due
    chunks = 0

    async def reassess_due(*args: Any) -> Any:
        nonlocal chunks
        result = await real(*args)
        chunks += 1
        if chunks == pause_at:
            print("IN-FLIGHT", flush=True)
            await asyncio.sleep(3600)  # killed here, before the commit
        return result

    reassessment.reassess_due = reassess_due  # type: ignore[assignment]
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        progression = PgProgression(pool)
        settings = SchedulerSettings(chunk_size=chunk, concurrency=1)
        result = await DeadlineScheduler(progression, progression, settings).run_once(at)
        print(f"DONE {result.reassessed} {result.moved}", flush=True)
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1],
            datetime.fromisoformat(sys.argv[2]),
            int(sys.argv[3]),
            int(sys.argv[4]) if len(sys.argv) > 4 else 0,
        )
    )
