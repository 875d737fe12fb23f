"""adapters.postgres.reassessment.evaluate_chunk on the real database: the scheduler's evaluation
over a keyset chunk of any customers (due or not), deciding as the scheduler would and writing
and locking nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from campaign_service.adapters.postgres import reassessment
from campaign_service.adapters.postgres.progression import PgProgression
from tests.integration.test_deadline_scheduler import JAN_2027, scheduler
from tests.integration.test_points_recorded import Clock, announced, entry, handler, tier_of


async def test_evaluate_chunk_decides_any_customers_by_keyset_and_writes_nothing(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await ladder_merchant(window_kind="calendar_year", downgrade_policy="to_qualified")
    keeper, loser, silver = (uuid.uuid4() for _ in range(3))
    await handler(app_pool).batch(
        [entry(merchant, keeper, 5200), entry(merchant, loser, 5200), entry(merchant, silver, 1200)]
    )
    await scheduler(app_pool).run_once(JAN_2027)  # 2026's points keep them; the period is now 2027
    await handler(app_pool, Clock(datetime(2027, 6, 1, tzinfo=UTC))).batch(
        [entry(merchant, keeper, 5100, at=datetime(2027, 5, 1, tzinfo=UTC))]
    )
    stamp = datetime(2027, 7, 1, tzinfo=UTC)  # nobody is due: the deadline is 2028-01-01
    decisions: list[reassessment.Decision] = []
    after = None
    async with PgProgression(app_pool)([merchant]) as tx:
        conn = tx._conn
        while True:
            chunk = await reassessment.evaluate_chunk(conn, [merchant], stamp, 2, after)
            decisions += chunk
            if len(chunk) < 2:
                break
            after = (chunk[-1].merchant_id, chunk[-1].customer_id)
    by_customer = {d.customer_id: d for d in decisions}
    assert len(decisions) == 3
    assert [d.customer_id for d in decisions] == sorted(by_customer)
    assert (by_customer[keeper].to_tier, by_customer[keeper].qualifying_points) == (None, 5100)
    assert (by_customer[loser].from_tier, by_customer[loser].to_tier, by_customer[loser].direction) == (
        "gold",
        "basic",
        "down",
    )
    assert (by_customer[silver].from_tier, by_customer[silver].to_tier, by_customer[silver].reason) == (
        "silver",
        "basic",
        "period_end",
    )
    for c, tier in ((keeper, "gold"), (loser, "gold"), (silver, "silver")):  # nothing written
        assert await tier_of(superuser_conn, merchant, c) == tier
        assert len(await announced(superuser_conn, merchant, c)) == 1
