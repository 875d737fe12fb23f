"""The outbox relay: claims unpublished rows, publishes them, waits for delivery, then marks them.

The outbox is sharded by key (migration 0050); a claim holds a few shards, and a relay keeps
`concurrency` claims in flight, so that the database, the Python work and the broker's
acknowledgements of different claims overlap, and N replicas publish in parallel. The events of
one key are in one shard, which one claim at a time publishes, oldest first: per-key order holds.

At-least-once: a relay that dies after publishing and before marking leaves the rows
unpublished, so they go out again; consumers deduplicate on `event_id`. It sleeps until a
NOTIFY wakes it (or a slow safety poll), backs off (bounded) while publishing fails, and purges
published rows after the retention period, and processed_events rows (the consumers' dedupe
record) after theirs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import structlog

from campaign_service import metrics
from campaign_service.backoff import Backoff, first_of, sleep_unless
from campaign_service.domain.events import OutboxMessage
from campaign_service.events.ports import EventPublisher, OutboxStore

log = structlog.get_logger(__name__)
_STEP_CLAIM, _STEP_PUBLISH, _STEP_MARK = (metrics.RELAY_STEP_SECONDS.labels(s) for s in ("claim", "publish", "mark"))


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = 1000  # rows per claim
    concurrency: int = 2  # claims in flight
    # Rows are pending but other claims hold their shards: look again this soon.
    busy_retry_s: float = 0.05
    poll_interval_s: float = 5.0
    retention_s: float = 3 * 24 * 3600.0
    purge_interval_s: float = 600.0
    # Longer than the consumed topics' retention: an event Kafka can still deliver is remembered.
    processed_retention_s: float = 30 * 24 * 3600.0
    stats_interval_s: float = 5.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0


@dataclass(frozen=True)
class BatchResult:
    claimed: int
    published: int
    error: str | None = None
    more: bool = False  # rows are pending that the claim left (past its limit, or held elsewhere)


@dataclass
class _ClaimLoop:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    idle: bool = True
    blocked: bool = False  # its last claim found rows in shards that another claim held


class OutboxRelay:
    def __init__(self, store: OutboxStore, publisher: EventPublisher, settings: RelaySettings | None = None) -> None:
        self._store = store
        self._publisher = publisher
        self._settings = settings or RelaySettings()
        self._loops: list[_ClaimLoop] = []  # while run() runs
        self.last_error: str | None = None

    def wake(self) -> None:
        """Something was written to the outbox: publish it now rather than at the next poll.

        One idle claim loop is woken (a claim of its own per loop only cost empty claims: each
        commit of a consumer batch notifies); when none is idle, every loop looks again when its
        claim is done. A claim that leaves rows behind wakes another loop itself."""
        if not self._wake_idle():
            for loop in self._loops:
                loop.wake.set()

    def _wake_idle(self) -> bool:
        idle = next((loop for loop in self._loops if loop.idle), None)
        if idle is None:
            return False
        idle.idle = False  # taken: the next wake goes to another
        idle.wake.set()
        return True

    async def publish_batch(self) -> BatchResult:
        """Publishes up to one batch of the oldest pending rows."""
        delivered: list[OutboxMessage] = []
        failed: dict[str, list[OutboxMessage]] = {}
        started = time.perf_counter()
        async with self._store.claim(self._settings.batch_size) as claim:
            batch = claim.messages
            more = claim.more
            if not batch:
                return BatchResult(0, 0, more=more)
            claimed = time.perf_counter()
            results = await self._publisher.publish(batch)
            published = time.perf_counter()
            for message, error in zip(batch, results, strict=True):
                if error is None:
                    delivered.append(message)
                else:
                    failed.setdefault(error, []).append(message)
            await claim.mark_published([m.event_id for m in delivered])
            for error, messages in failed.items():
                await claim.mark_failed([m.event_id for m in messages], error)
        _STEP_CLAIM.observe(claimed - started)
        _STEP_PUBLISH.observe(published - claimed)
        _STEP_MARK.observe(time.perf_counter() - published)
        for topic, n in Counter(m.topic for m in delivered).items():
            metrics.OUTBOX_PUBLISHED.labels(topic).inc(n)
        for messages in failed.values():
            for m in messages:
                metrics.OUTBOX_PUBLISH_FAILURES.labels(m.topic).inc()
        first_error = next(iter(failed), None)
        if first_error is not None:
            log.warning(
                "outbox publish failed",
                failed=sum(len(v) for v in failed.values()),
                delivered=len(delivered),
                error=first_error,
            )
        return BatchResult(len(batch), len(delivered), first_error, more)

    async def _publish_one(self) -> BatchResult:
        try:
            return await self.publish_batch()
        except Exception as exc:  # the store or transport failed: back off and retry
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("outbox relay cycle failed", error=error)
            return BatchResult(0, 0, error)

    async def run(self, stop: asyncio.Event) -> None:
        """`concurrency` claim loops, each woken by new rows (or its poll) on its own: a row that
        commits while one claim is publishing is taken by an idle one at once, rather than after
        the whole round of claims (bench.points_latency: the relay's share of the latency)."""
        s = self._settings
        log.info("outbox relay started", batch_size=s.batch_size, concurrency=s.concurrency)
        self._loops = [_ClaimLoop() for _ in range(s.concurrency)]
        async with asyncio.TaskGroup() as tasks:
            for loop in self._loops:
                tasks.create_task(self._claim_loop(loop, stop))
            tasks.create_task(self._housekeeping(stop))
        log.info("outbox relay stopped")

    async def _claim_loop(self, loop: _ClaimLoop, stop: asyncio.Event) -> None:
        s = self._settings
        backoff = Backoff(s.backoff_initial_s, s.backoff_max_s)
        wake = loop.wake
        while not stop.is_set():
            wake.clear()
            loop.idle = False
            result = await self._publish_one()
            self._unblock(loop)
            if result.more and result.claimed:
                self._wake_idle()  # another loop takes the shards this claim left
            if self.last_error and not result.error:
                log.info("outbox publishing recovered", published=result.published)
            self.last_error = result.error
            if result.error and result.published == 0:
                metrics.RETRIES.labels("outbox_relay").inc()
                await sleep_unless(stop, backoff.next())
                continue
            backoff.reset()
            if result.more and result.claimed:
                continue  # more is waiting
            loop.idle = True
            # Pending rows in shards that other claims hold: look again when a claim of this relay
            # ends (or soon: another replica's); else wait for a wake.
            loop.blocked = result.more
            await first_of(stop.wait(), wake.wait(), within=s.busy_retry_s if result.more else s.poll_interval_s)
            loop.blocked = False

    def _unblock(self, done: _ClaimLoop) -> None:
        """A claim ended, its shards are free: the loops that found rows in them look again now."""
        for loop in self._loops:
            if loop is not done and loop.blocked:
                loop.blocked = False
                loop.wake.set()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """The backlog gauges every stats interval, and the purges every purge interval."""
        s = self._settings
        next_purge = time.monotonic() + 30.0  # not while the service is still starting up
        while not stop.is_set():
            await self._refresh_stats()
            if time.monotonic() >= next_purge:
                next_purge = time.monotonic() + s.purge_interval_s
                await self._purge()
            await sleep_unless(stop, s.stats_interval_s)

    async def drain(self, timeout_s: float) -> None:
        """Publishes what is pending now (bounded), e.g. rows the consumer wrote just before shutdown."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                result = await asyncio.wait_for(self.publish_batch(), max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # best effort; rows stay in the outbox
                log.warning("outbox drain stopped", error=type(exc).__name__)
                return
            if result.error or not (result.more and result.claimed):
                return

    async def _refresh_stats(self) -> None:
        try:
            stats = await self._store.stats()
        except Exception as exc:  # metrics only; the next cycle tries again
            log.debug("outbox stats unavailable", error=type(exc).__name__)
            return
        metrics.OUTBOX_BACKLOG.set(stats.pending)
        metrics.OUTBOX_OLDEST_AGE.set(stats.oldest_age_s)

    async def _purge(self) -> None:
        try:
            purged = await self._store.purge(self._settings.retention_s)
        except Exception as exc:  # retried at the next purge interval
            log.warning("outbox purge failed", error=type(exc).__name__)
            return
        metrics.OUTBOX_PURGED.inc(purged)
        if purged:
            log.info("outbox purged", rows=purged, retention_s=self._settings.retention_s)
        try:
            purged = await self._store.purge_processed(self._settings.processed_retention_s)
        except Exception as exc:  # retried at the next purge interval
            log.warning("processed events purge failed", error=type(exc).__name__)
            return
        metrics.PROCESSED_PURGED.inc(purged)
        if purged:
            log.info("processed events purged", rows=purged, retention_s=self._settings.processed_retention_s)
