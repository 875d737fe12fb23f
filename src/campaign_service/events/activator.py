"""The activator of scheduled configuration changes: makes each pending change the stored
configuration once its `effective_at` has come (service.scheduled.ScheduledChanges.activate_due).

It sleeps until the earliest pending change of any merchant is due (`campaign_next_config_change`,
an owner function that returns a time only), at most `poll_s` (a change scheduled through another
replica is seen within it; one scheduled through this one wakes it at once). Any number of
replicas run it: each change is claimed `FOR UPDATE SKIP LOCKED` in its merchant's transaction
and leaves `pending` in that transaction, so it is applied once. Reads do not wait for it (they
apply due pending changes themselves), so its lag only delays what reads do not show: the
re-assessment job, the `vip_tier.updated` events, and the points path and the deadline scheduler,
which read the stored configuration.
"""

from __future__ import annotations

import asyncio

import structlog

from campaign_service.backoff import first_of
from campaign_service.service.errors import Unavailable
from campaign_service.service.scheduled import ScheduledChanges
from campaign_service.service.scheduled_ports import ScheduledStore

log = structlog.get_logger(__name__)


class Activator:
    def __init__(self, changes: ScheduledChanges, store: ScheduledStore, poll_s: float = 5.0) -> None:
        self._changes = changes
        self._store = store
        self._poll_s = poll_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait = self._poll_s
            try:
                await self._changes.activate_due()
                nxt = await self._store.next_due()
                if nxt is not None:
                    wait = min(wait, max((nxt - self._changes.now()).total_seconds(), 0.05))
            except Unavailable as exc:
                log.warning("activation pass failed; retrying", error=str(exc))
            self._changes.scheduled.clear()
            # first_of leaves the losers cancelled without awaiting them: awaiting one under
            # suppress(CancelledError) swallowed a shutdown's cancel arriving meanwhile (a hang).
            await first_of(self._changes.scheduled.wait(), stop.wait(), within=wait)
