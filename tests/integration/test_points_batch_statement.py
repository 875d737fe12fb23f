"""The points batch's statements (adapters/postgres/progression.py): one statement records the
events, adds their points and reads each customer's window sum with them counted exactly once; a
batch runs as transactions split by customer, at once; BEGIN and the scope go in one round trip,
and a block that fails leaves nothing behind on the connection it returns to the pool."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

from campaign_service.adapters.postgres.progression import PgProgression, _scope
from campaign_service.events.points_recorded import PointsRecordedHandler
from tests.integration.test_points_recorded import NOW, Clock, entry, handler, history, tier_of


async def test_a_window_sum_counts_stored_points_and_the_batchs_own_once(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    """900 stored; then 50 on the same day (an update of the stored bucket) and 50 on another day
    (a new bucket) in one batch: 1000, silver. Counting the updated bucket twice would say 1,900
    (still silver, but the history row says which), missing the batch's points 900 (basic)."""
    merchant, customer = await ladder_merchant(), uuid.uuid4()
    h = handler(app_pool)
    assert await h.batch([entry(merchant, customer, 900)]) == [None]
    same_day, day_before = entry(merchant, customer, 50), entry(merchant, customer, 50, at=NOW - timedelta(days=1))
    assert await h.batch([same_day, day_before]) == [None, None]
    assert await tier_of(superuser_conn, merchant, customer) == "silver"
    assert [row[4] for row in await history(superuser_conn, merchant, customer)] == [900, 1000]


async def test_a_rolling_window_leaves_out_the_batchs_points_before_it(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant, customer = await ladder_merchant(window_kind="rolling_months", window_months=1), uuid.uuid4()
    h = handler(app_pool)
    old, recent = entry(merchant, customer, 800, at=NOW - timedelta(days=60)), entry(merchant, customer, 700)
    assert await h.batch([old, recent]) == [None, None]
    assert await tier_of(superuser_conn, merchant, customer) == "basic"  # 700 in the window, not 1,500
    assert [row[4] for row in await history(superuser_conn, merchant, customer)] == [700]


class Watching:
    """A Progression that counts the transactions open at once and the customers of each."""

    def __init__(self, inner: PgProgression) -> None:
        self.inner = inner
        self.open = 0
        self.most = 0
        self.merchant_sets: list[Sequence[UUID]] = []

    @asynccontextmanager
    async def __call__(self, merchants: Sequence[UUID]) -> AsyncIterator[Any]:
        async with self.inner(merchants) as tx:
            self.open += 1
            self.most = max(self.most, self.open)
            self.merchant_sets.append(merchants)
            try:
                await asyncio.sleep(0.05)  # both shares are in their transactions at once
                yield tx
            finally:
                self.open -= 1


async def test_a_batch_runs_as_concurrent_transactions_split_by_customer_and_each_customers_events_stay_together(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await ladder_merchant()
    customers = [uuid.uuid4() for _ in range(40)]
    watching = Watching(PgProgression(app_pool))
    h = PointsRecordedHandler(watching, clock=Clock(), concurrency=2, min_share=40)
    # each customer: 600 then 600 (1,200: silver, as one move from nothing to silver)
    batch = [entry(merchant, c, 600) for c in customers] + [entry(merchant, c, 600) for c in customers]
    assert await h.batch(batch) == [None] * len(batch)
    assert watching.most == 2
    for c in customers:
        assert await tier_of(superuser_conn, merchant, c) == "silver"
        assert [row[4] for row in await history(superuser_conn, merchant, c)] == [1200]


async def test_a_batch_smaller_than_two_shares_stays_one_transaction(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await ladder_merchant()
    watching = Watching(PgProgression(app_pool))
    h = PointsRecordedHandler(watching, clock=Clock(), concurrency=2, min_share=40)
    batch = [entry(merchant, uuid.uuid4(), 600) for _ in range(79)]
    assert await h.batch(batch) == [None] * len(batch)
    assert (watching.most, len(watching.merchant_sets)) == (1, 1)


def test_the_scope_literal_holds_canonical_uuids_only() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    first, second = sorted([str(a), str(b)])
    assert _scope([b, a, b]) == json.dumps({first: True, second: True})
    assert _scope([str(a).upper()]) == json.dumps({str(a): True})  # type: ignore[list-item]
    with pytest.raises(ValueError):
        _scope(["x', true); DROP TABLE merchants; --"])  # type: ignore[list-item]


async def test_a_block_that_fails_writes_nothing_and_the_connection_comes_back_clean(
    app_pool: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await new_merchant()
    progression = PgProgression(app_pool)
    event_id = uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with progression([merchant]) as tx:
            fresh, _ = await tx.record_and_lock([(event_id, merchant)], "points.recorded", [], {})
            assert fresh == {event_id}
            raise RuntimeError("the handler failed")
    assert await superuser_conn.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 0
    for _ in range(app_pool.get_max_size()):  # whichever connection comes next: no transaction, no scope
        async with app_pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT coalesce(current_setting('app.merchant_ids', true), '')") == ""
    async with progression([merchant]) as tx:  # and the scope of a transaction is its own
        fresh, _ = await tx.record_and_lock([(event_id, merchant)], "points.recorded", [], {})
    assert fresh == {event_id}
    assert await superuser_conn.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 1
