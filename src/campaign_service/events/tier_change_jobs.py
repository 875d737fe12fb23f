"""The re-assessment job runner (issue 14): runs queued tier change jobs chunk by chunk.

Any number of replicas run it. Each chunk is ONE transaction that locks the job row
(FOR UPDATE SKIP LOCKED), claims the next keyset chunk after the job's cursor, evaluates and
writes it (state, history, outbox) and advances the cursor: so two replicas never run the same
chunk (the second finds the job row locked and leaves it), and a replica killed -9 mid-chunk loses
that transaction whole, the cursor stays at the last committed chunk and the next runner resumes
there: every customer is assessed exactly once per job. The only cross-merchant read is
`campaign_runnable_tier_change_jobs` (ids only); the chunks run as the service role scoped to the
job's merchant (RLS applies).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

import structlog

from campaign_service import metrics
from campaign_service.domain.tier_changes import ChunkResult
from campaign_service.service.errors import Unavailable

log = structlog.get_logger(__name__)


class TierChangeEngine(Protocol):
    async def runnable(self, at: datetime, limit: int) -> list[tuple[UUID, UUID]]: ...
    async def run_chunk(self, merchant_id: UUID, job_id: UUID, stamp: datetime, chunk: int) -> ChunkResult: ...
    async def fail(self, merchant_id: UUID, job_id: UUID, error: str, stamp: datetime) -> None: ...


@dataclass(frozen=True)
class JobRunnerSettings:
    chunk_size: int = 20_000
    interval_s: float = 1.0  # between looks for work when there was none
    max_jobs: int = 100


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class TierChangeJobRunner:
    def __init__(
        self,
        engine: TierChangeEngine,
        settings: JobRunnerSettings | None = None,
        *,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._engine = engine
        self._settings = settings or JobRunnerSettings()
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                worked = await self.run_once()
            except Unavailable as exc:
                log.warning("tier change job pass failed; retrying", error=str(exc))
                worked = 0
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.interval_s)

    async def run_once(self) -> int:
        """Every runnable job as far as this runner gets it; the chunks run."""
        chunks = 0
        for merchant_id, job_id in await self._engine.runnable(self._clock(), self._settings.max_jobs):
            chunks += await self.run_job(merchant_id, job_id)
        return chunks

    async def run_job(self, merchant_id: UUID, job_id: UUID) -> int:
        """Chunks of the job until it is done or another runner holds it; the chunks run. A chunk
        that fails on bad data (not an outage) marks the job failed with the error."""
        chunks = 0
        while True:
            started = time.perf_counter()
            try:
                result = await self._engine.run_chunk(merchant_id, job_id, self._clock(), self._settings.chunk_size)
            except Unavailable:
                raise
            except Exception as exc:  # a statement refused: the job cannot progress
                log.exception("tier change job failed", merchant_id=str(merchant_id), job_id=str(job_id))
                await self._engine.fail(merchant_id, job_id, f"{type(exc).__name__}: {exc}", self._clock())
                metrics.TIER_CHANGE_JOBS_FINISHED.labels("failed").inc()
                return chunks
            if result.job is None:
                return chunks
            chunks += 1
            metrics.TIER_CHANGE_JOB_CHUNK_SECONDS.observe(time.perf_counter() - started)
            metrics.TIER_CHANGE_JOB_CUSTOMERS.inc(result.claimed)
            metrics.TIER_CHANGE_JOB_MOVES.labels("up").inc(result.up)
            metrics.TIER_CHANGE_JOB_MOVES.labels("down").inc(result.moved - result.up)
            if result.finished:
                metrics.TIER_CHANGE_JOBS_FINISHED.labels("done").inc()
                log.info(
                    "tier change job done", merchant_id=str(merchant_id), job_id=str(job_id),
                    customers=result.job.customers_done, moved=result.job.moved,
                )  # fmt: skip
                return chunks
