"""Downgrade warnings (programme `downgrade_warning_days`, what Talon.One calls TierWillDowngrade):
`vip_tier.downgrade_scheduled` once per customer and deadline, that many days before a downgrade
would land, with the points still needed to keep the tier.

Whether a customer would move down is `domain.progression.at_deadline` evaluated AT the deadline
on the points the period holds now: the scheduler's own rule, no second implementation. A
customer who would keep the tier is not warned (and is looked at again on later passes: points
may be reversed). The warning row (tier_downgrade_warnings, keyed by the deadline) and the event
are written in one transaction, so a replica killed mid-chunk warns nobody twice, and a new
deadline (a new period) can be warned about again.

The same loop refreshes the due-backlog gauges (customers past their deadline and the age of the
earliest), read through a SECURITY DEFINER function that returns a count and a time only.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from campaign_service import metrics
from campaign_service.domain import events
from campaign_service.domain.progression import at_deadline
from campaign_service.service.errors import Unavailable
from campaign_service.service.progression_api import ladder_of
from campaign_service.service.progression_api_ports import WarningStore

log = structlog.get_logger(__name__)


def system_clock() -> datetime:
    return datetime.now(UTC)


class DowngradeWarnings:
    def __init__(
        self,
        store: WarningStore,
        *,
        chunk_size: int = 1000,
        interval_s: float = 60.0,
        clock: Callable[[], datetime] = system_clock,
    ) -> None:
        self._store = store
        self._chunk = chunk_size
        self._interval_s = interval_s
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh_backlog()
                await self.run_once()
            except Unavailable as exc:
                log.warning("downgrade warning pass failed; retrying next interval", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)

    async def refresh_backlog(self, now: datetime | None = None) -> None:
        at = now or self._clock()
        due, oldest = await self._store.due_backlog(at)
        metrics.DUE_BACKLOG.set(due)
        metrics.OLDEST_OVERDUE_SECONDS.set(max((at - oldest).total_seconds(), 0.0) if oldest else 0.0)

    async def run_once(self, now: datetime | None = None) -> int:
        """One pass at `now`; how many warnings were emitted."""
        at = now or self._clock()
        warned = 0
        for merchant in await self._store.warning_merchants(at, 100_000):
            after = None
            while True:
                n, after = await self._merchant_chunk(merchant, at, after)
                warned += n
                if after is None:
                    break
        if warned:
            metrics.DOWNGRADE_WARNINGS.inc(warned)
            log.info("downgrade warnings emitted", warnings=warned)
        return warned

    async def _merchant_chunk(
        self, merchant: uuid.UUID, at: datetime, after: uuid.UUID | None
    ) -> tuple[int, uuid.UUID | None]:
        async with self._store(merchant) as tx:
            programme = (await tx.programme()).programme
            if not programme.downgrade_warning_days or not programme.has_deadlines:
                return 0, None
            ladder = ladder_of(await tx.tiers())
            claimed = await tx.warning_candidates(at, programme.downgrade_warning_days, after, self._chunk)
            windows = [
                (customer, *programme.assessment_window(state.period_end))
                for customer, state, _ in claimed
                if state.period_end is not None
            ]
            points = await tx.period_points(windows)
            messages, warned = [], []
            for customer, state, _ in claimed:
                if state.deadline is None or customer not in points:
                    continue
                evaluation = at_deadline(programme, ladder, state, points[customer], state.deadline)
                move = evaluation.move
                current = ladder.get(state.tier_id)
                if move is None or move.direction != "down" or current is None:
                    continue
                warned.append((customer, state.deadline))
                messages.append(
                    events.downgrade_scheduled(
                        event_id=uuid.uuid4(),
                        merchant_id=merchant,
                        customer_id=customer,
                        tier_id=state.tier_id,
                        target_tier_id=move.tier_id,
                        deadline=state.deadline,
                        points_needed=max(current.min_points - max(points[customer], 0), 0),
                        program_version=programme.version,
                        correlation_id=str(uuid.uuid4()),
                    )
                )
            await tx.record_warnings(warned)
            await tx.add_outbox(messages)
        next_after = claimed[-1][0] if len(claimed) == self._chunk else None
        return len(warned), next_after
