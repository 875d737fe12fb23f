"""The outbox table seen by the relay: claim, mark, purge, inspect, and LISTEN for new rows; and
the retention of processed_events, which the relay purges on the same interval.

Its pool logs in as `campaign_relay`, the role whose policies see all merchants' outbox rows and
(to purge them) processed_events rows, and nothing else (the outbox only in its own sessions:
`session_user`, migration 0009); the service role is not a member of it.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from campaign_service import metrics
from campaign_service.backoff import Backoff, first_of, sleep_unless
from campaign_service.domain.events import OutboxMessage
from campaign_service.events.ports import OutboxStats

log = structlog.get_logger(__name__)

CHANNEL = "outbox_events"
# The outbox's shards by key (migration 0050, `campaign_outbox_shard`); each is claimed by one
# transaction at a time, under the advisory lock (0x43414D51, shard).
SHARDS = 16
_COLUMNS = "event_id, merchant_id, topic, key, payload, headers, traceparent"


def _message(row: asyncpg.Record) -> OutboxMessage:
    return OutboxMessage(
        event_id=row["event_id"],
        merchant_id=row["merchant_id"],
        topic=row["topic"],
        key=row["key"],
        payload=row["payload"],
        headers=row["headers"],
        traceparent=row["traceparent"],
    )


@dataclass(frozen=True)
class OutboxRow:
    """An outbox row as the CLI lists it."""

    message: OutboxMessage
    created_at: datetime
    published_at: datetime | None
    attempts: int
    last_error: str | None


class PgClaim:
    def __init__(self, conn: PoolConnectionProxy[Any], messages: list[OutboxMessage], more: bool) -> None:
        self._conn = conn
        self.messages = messages
        self.more = more

    async def mark_published(self, event_ids: Sequence[UUID]) -> None:
        if event_ids:
            await self._conn.execute(
                "UPDATE outbox_events SET published_at = clock_timestamp(), attempts = attempts + 1,"
                " last_error = NULL WHERE event_id = ANY($1::uuid[])",
                list(event_ids),
            )

    async def mark_failed(self, event_ids: Sequence[UUID], error: str) -> None:
        if event_ids:
            await self._conn.execute(
                "UPDATE outbox_events SET attempts = attempts + 1, last_error = $2 WHERE event_id = ANY($1::uuid[])",
                list(event_ids),
                error[:500],
            )


class PgOutbox:
    def __init__(
        self, pool: asyncpg.Pool[asyncpg.Record], *, claim_hold_s: float = 30.0, shards_per_claim: int = SHARDS
    ) -> None:
        """`pool` logs in as the relay's role (Settings.relay_dsn). While there is a backlog (the
        last claim was full), a claim locks up to `shards_per_claim` of the outbox's shards
        (migration 0050), so that other claims, of this relay or of other replicas, find shards of
        their own. Without one, a claim takes every free shard that has rows: a consumer batch's
        rows spread over all 16 shards, and taking them in one claim rather than 16/`shards_per_claim`
        claims in turn is what keeps the relay's share of the latency down (bench.points_latency:
        committed->relayed p50 49 ms with 4 shards per claim)."""
        self._pool = pool
        # A claim stays open while the transport confirms delivery; the server must not end it first.
        self._hold_ms = str(int(claim_hold_s * 1000))
        self._shards_per_claim = max(1, min(SHARDS, shards_per_claim))
        # Where the next claim starts looking: rotated, so that every shard gets its turn.
        self._next_shard = os.urandom(1)[0] % SHARDS  # replicas start apart
        self._backlog = False  # the last claim was full: rows wait beyond what one claim takes

    @asynccontextmanager
    async def _as_relay(self) -> AsyncIterator[PoolConnectionProxy[Any]]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[PgClaim]:
        """The oldest unpublished rows of shards no other claim holds (how many: see __init__),
        locked until the block ends; in seq order within each shard (so within each key)."""
        first = self._next_shard
        most = self._shards_per_claim if self._backlog else SHARDS
        self._next_shard = (first + most) % SHARDS
        async with self._as_relay() as conn:
            # One round trip: the shard locks, the claim's own idle timeout, and the plan of the
            # claim. The relay's RLS policy (session_user = ...) is estimated to keep 0.5 % of the
            # rows, so with a backlog the planner expects a few dozen rows per shard and reads
            # them all (bitmap or sequential scan, then a sort: 180 ms per shard of 6,000 rows)
            # where the (shard, seq) index stops after the limit (4 ms).
            lock = await conn.fetchrow(
                "SELECT locked, busy, set_config('idle_in_transaction_session_timeout', $3, true),"
                " set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)"
                " FROM campaign_outbox_lock_shards($1, $2)",
                first,
                most,
                self._hold_ms,
            )
            shards: list[int] = lock["locked"] if lock is not None else []
            rows = []
            if shards:
                per_shard = -(-limit // len(shards))
                rows = await conn.fetch(
                    f"SELECT o.shard, {_COLUMNS} FROM unnest($1::integer[]) AS s(shard) CROSS JOIN LATERAL ("
                    f" SELECT shard, {_COLUMNS} FROM outbox_events"
                    " WHERE shard = s.shard AND published_at IS NULL"
                    " ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) AS o",
                    shards,
                    per_shard,
                )
            full = any(n >= per_shard for n in Counter(r["shard"] for r in rows).values()) if rows else False
            self._backlog = full
            more = (lock is not None and lock["busy"] > 0) or full
            yield PgClaim(conn, [_message(r) for r in rows], more)

    async def stats(self) -> OutboxStats:
        async with self._as_relay() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) AS pending,"
                " coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)::float8 AS age"
                " FROM outbox_events WHERE published_at IS NULL"
            )
        assert row is not None
        return OutboxStats(pending=int(row["pending"]), oldest_age_s=float(row["age"]))

    async def purge(self, older_than_s: float, batch: int = 5000, max_batches: int = 100) -> int:
        """Deletes published rows older than the retention, in bounded batches."""
        total = 0
        for _ in range(max_batches):
            async with self._as_relay() as conn:
                deleted = await conn.fetchval(
                    "WITH gone AS (DELETE FROM outbox_events WHERE event_id IN ("
                    " SELECT event_id FROM outbox_events WHERE published_at IS NOT NULL"
                    " AND published_at < clock_timestamp() - make_interval(secs => $1) LIMIT $2) RETURNING 1)"
                    " SELECT count(*) FROM gone",
                    older_than_s,
                    batch,
                )
            total += int(deleted)
            if deleted < batch:
                break
        return total

    async def purge_processed(self, older_than_s: float, batch: int = 5000, max_batches: int = 100) -> int:
        """Deletes processed_events rows (the consumers' dedupe record) older than the retention, the
        oldest first, in bounded batches: keyset on created_at, one short transaction each."""
        total = 0
        after: datetime | None = None
        for _ in range(max_batches):
            async with self._as_relay() as conn:
                row = await conn.fetchrow(
                    "WITH doomed AS ("
                    " SELECT event_id FROM processed_events"
                    " WHERE created_at < clock_timestamp() - make_interval(secs => $1)"
                    " AND ($3::timestamptz IS NULL OR created_at >= $3)"
                    " ORDER BY created_at LIMIT $2),"
                    " gone AS (DELETE FROM processed_events p USING doomed d"
                    " WHERE p.event_id = d.event_id RETURNING p.created_at)"
                    " SELECT count(*) AS n, max(created_at) AS last FROM gone",
                    older_than_s,
                    batch,
                    after,
                )
            assert row is not None
            total += int(row["n"])
            if row["n"] < batch:
                break
            after = row["last"]
        return total

    async def rows(self, *, pending_only: bool, limit: int) -> list[OutboxRow]:
        """The newest rows first (all, or only those still waiting to be published)."""
        where = "WHERE published_at IS NULL" if pending_only else ""
        async with self._as_relay() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS}, created_at, published_at, attempts, last_error FROM outbox_events"
                f" {where} ORDER BY seq DESC LIMIT $1",
                limit,
            )
        return [
            OutboxRow(_message(r), r["created_at"], r["published_at"], r["attempts"], r["last_error"]) for r in rows
        ]


class PgOutboxListener:
    """Calls `wake` whenever an outbox row commits (LISTEN/NOTIFY); reconnects with bounded backoff."""

    def __init__(self, dsn: str, backoff: Backoff | None = None) -> None:
        self._dsn = dsn
        self._backoff = backoff or Backoff(0.5, 10.0)

    async def run(self, wake: Callable[[], None], stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
            except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
                metrics.RETRIES.labels("outbox_listen").inc()
                log.warning("outbox listener cannot connect", error=type(exc).__name__)
                await sleep_unless(stop, self._backoff.next())
                continue
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(functools.partial(_set_on_termination, lost))
                await conn.add_listener(CHANNEL, lambda *_: wake())
                self._backoff.reset()
                wake()  # rows may have committed while nobody listened
                await first_of(stop.wait(), lost.wait())
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox listener lost", error=type(exc).__name__)
            finally:
                if not conn.is_closed():
                    await conn.close(timeout=2)
            if not stop.is_set():
                metrics.RETRIES.labels("outbox_listen").inc()
                await sleep_unless(stop, self._backoff.next())


def _set_on_termination(lost: asyncio.Event, _conn: object) -> None:
    lost.set()
