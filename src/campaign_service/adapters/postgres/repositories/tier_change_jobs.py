"""Re-assessment jobs of the merchant (tier_change_jobs, migration 0030): enqueue inside the
caller's transaction, read progress."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from campaign_service.adapters.postgres.repositories.rows import Connection
from campaign_service.domain.tier_changes import ApplyMode, TierChangeJob

JOB_COLUMNS = (
    "merchant_id, job_id, change_id, mode, state, config_version, not_before, customers_total, customers_done,"
    " moved, created_at, started_at, finished_at, error"
)


def job_from_row(row: Mapping[str, Any]) -> TierChangeJob:
    return TierChangeJob(
        merchant_id=row["merchant_id"],
        job_id=row["job_id"],
        change_id=row["change_id"],
        mode=row["mode"],
        state=row["state"],
        config_version=int(row["config_version"]),
        not_before=row["not_before"],
        customers_total=int(row["customers_total"]),
        customers_done=int(row["customers_done"]),
        moved=int(row["moved"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
    )


class PgTierChangeJobs:
    def __init__(self, conn: Connection, merchant_id: UUID) -> None:
        self._conn = conn
        self._merchant = merchant_id

    async def enqueue(
        self, change_id: UUID, *, mode: ApplyMode, config_version: int, not_before: datetime | None = None
    ) -> UUID:
        """campaign_enqueue_tier_change_job (migration 0030), in this transaction."""
        job_id: UUID = await self._conn.fetchval(
            "SELECT campaign_enqueue_tier_change_job($1, $2, $3, $4)", change_id, mode, config_version, not_before
        )
        return job_id

    async def get(self, job_id: UUID) -> TierChangeJob | None:
        row = await self._conn.fetchrow(
            f"SELECT {JOB_COLUMNS} FROM tier_change_jobs WHERE merchant_id = $1 AND job_id = $2",
            self._merchant,
            job_id,
        )
        return job_from_row(row) if row is not None else None

    async def move_holders(
        self, tier_id: str, *, mode: ApplyMode, job_id: UUID, stamp: datetime | None = None
    ) -> int:
        """Moves the holders of `tier_id` (still stored) as deleting it in `mode` does, at
        `stamp` (None: now); how many moved."""
        # (imported here: the engine module imports this one for the job columns)
        from campaign_service.adapters.postgres.tier_change_jobs import Configuration, apply_chunk, now_ms, setup_of

        programme, ladder = await setup_of(self._conn, self._merchant)
        config = Configuration.deleting(programme, ladder, mode, tier_id)
        _, _, moved, _ = await apply_chunk(
            self._conn, self._merchant, config, stamp or now_ms(), job_id, chunk=2**31 - 1, holders_only=True
        )
        return moved
