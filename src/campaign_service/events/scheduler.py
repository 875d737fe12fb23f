"""The deadline scheduler: re-assesses customers whose deadline (end of period + grace) has passed.

Who may read across merchants: only `campaign_due_merchants` (a SECURITY DEFINER function that
returns merchant ids and counts, nothing of the customers). Everything else runs as the service
role in transactions scoped to a group of those merchants, so RLS still confines every statement:
no role reads another merchant's customers, and no new login role is needed.

A pass takes the due merchants, then per group of merchants claims chunks of due customers in key
order (`FOR UPDATE SKIP LOCKED`, keyset after the last claimed key) and, in the chunk's one
transaction and ONE statement (PgProgressionTransaction.reassess_due): sums each customer's points
of the period that ended, applies the programme's downgrade policy (the rules of
domain.progression.at_deadline, set-based in SQL; a test compares the two), writes the moves
(history from the table's triggers) and their `vip_tier.assigned` events, and moves the others'
deadline to the next period. (Per customer in Python it cost ~0.14 ms of this process and ~0.3 ms
of PostgreSQL; set-based, ~0.001 ms and ~0.14 ms: bench.scheduler.)
Replicas skip each other's locked rows, and a committed chunk is no longer due, so two replicas
never move a customer twice; a replica killed mid-chunk loses its transaction and the customers
stay due for the next pass. A points batch holding a customer's row makes the scheduler skip that
customer until the next pass (its points may change the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import structlog

from campaign_service import metrics
from campaign_service.service.errors import Unavailable
from campaign_service.service.progression import millis
from campaign_service.service.progression_ports import CustomerKey, DueMerchants, Progression

log = structlog.get_logger(__name__)

SOURCE = "scheduler"


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SchedulerSettings:
    # customers per transaction (bench.scheduler: PostgreSQL 0.078 ms/customer at 20,000, 0.095 at 5,000)
    chunk_size: int = 20000
    merchants_per_group: int = 1000  # merchants per transaction scope
    max_merchants: int = 100_000  # due merchants taken per pass
    interval_s: float = 60.0
    concurrency: int = 2  # chunks in flight at once (one connection each), over disjoint merchant groups


@dataclass
class PassResult:
    reassessed: int = 0
    moved: int = 0
    chunks: int = 0


class DeadlineScheduler:
    def __init__(
        self,
        progression: Progression,
        due: DueMerchants,
        settings: SchedulerSettings | None = None,
        *,
        clock: Callable[[], datetime] = system_clock,
    ) -> None:
        self._progression = progression
        self._due = due
        self._settings = settings or SchedulerSettings()
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        """Passes until `stop` is set, one every interval (at once again after a full pass)."""
        while not stop.is_set():
            try:
                result = await self.run_once()
            except Unavailable as exc:
                log.warning("scheduler pass failed; retrying next interval", error=str(exc))
                result = PassResult()
            if result.reassessed == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.interval_s)

    async def run_once(self, now: datetime | None = None) -> PassResult:
        """One pass over everything due at `now` (the clock when None): the due merchants in
        groups, `concurrency` groups at a time, each group chunk after chunk in key order."""
        at = now or self._clock()
        result = PassResult()
        due = await self._due.due_merchants(at, self._settings.max_merchants)
        merchants = sorted(m for m, _ in due)
        step = self._settings.merchants_per_group
        groups = [merchants[start : start + step] for start in range(0, len(merchants), step)]
        pending = iter(groups)

        async def worker() -> None:
            for group in pending:  # shared: each group goes to one worker
                await self._group(group, at, result)

        await asyncio.gather(*(worker() for _ in range(max(1, min(self._settings.concurrency, len(groups))))))
        if result.reassessed:
            log.info("deadline pass", reassessed=result.reassessed, moved=result.moved, chunks=result.chunks)
        return result

    async def _group(self, group: Sequence[UUID], at: datetime, result: PassResult) -> None:
        after: CustomerKey | None = None
        while True:
            started = time.perf_counter()
            claimed, moves, after = await self._chunk(group, at, after)
            metrics.SCHEDULER_CHUNK_SECONDS.observe(time.perf_counter() - started)
            if claimed:
                result.chunks += 1
                result.reassessed += claimed
                result.moved += moves
                metrics.SCHEDULER_REASSESSED.inc(claimed)
            if after is None:
                return

    async def _chunk(
        self, merchants: Sequence[UUID], at: datetime, after: CustomerKey | None
    ) -> tuple[int, int, CustomerKey | None]:
        """One transaction of one statement: claim, re-assess (the policy of
        domain.progression.at_deadline, set-based in SQL), write. (claimed, moved, key to continue
        after or None)."""
        limit = self._settings.chunk_size
        async with self._progression(merchants) as tx:
            claimed, last, moves = await tx.reassess_due(merchants, at, millis(at), limit, after)
        for direction, reason, n in moves:
            metrics.TIER_MOVES.labels(direction, reason).inc(n)
        return claimed, sum(n for _, _, n in moves), last if claimed == limit else None
