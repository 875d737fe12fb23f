"""Downgrade warnings on the real database with a controllable clock: `vip_tier.downgrade_scheduled`
that many days before a downgrade would land, once per deadline, with the points still needed;
nobody who would keep the tier; nothing for a merchant without warnings; the backlog gauges."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from campaign_service import metrics, topics
from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.adapters.postgres.progression_reads import PgProgressionApi
from campaign_service.domain.progression import Programme
from campaign_service.domain.tiers import TierSpec
from campaign_service.events.points_recorded import PointsRecordedHandler
from campaign_service.service.downgrade_warnings import DowngradeWarnings
from campaign_service.service.progression_api import ProgressionApi
from tests.integration.test_points_recorded import Clock, entry

JUNE = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
DEADLINE = datetime(2027, 1, 1, tzinfo=UTC)


async def merchant_with_programme(new_merchant: Any, tier_service: Any, app_pool: Any, warning_days: int) -> Any:
    merchant = await new_merchant()
    await tier_service.create(merchant, "silver", TierSpec(name="Silver", min_points=100))
    await tier_service.create(merchant, "gold", TierSpec(name="Gold", min_points=1000))
    api = ProgressionApi(PgProgressionApi(app_pool))
    values = Programme(window="calendar_year", downgrade_policy="to_qualified", downgrade_warning_days=warning_days)
    await api.update_programme(merchant, values, ["window", "downgrade_policy", "downgrade_warning_days"])
    return merchant


async def gold_with(app_pool: Any, merchant: uuid.UUID, points: int) -> uuid.UUID:
    """A customer made gold by hand in June 2026 (deadline 1 Jan 2027) who earned `points` in 2026."""
    customer = uuid.uuid4()
    await ProgressionApi(PgProgressionApi(app_pool)).assign(merchant, customer, "gold", "test", now=JUNE)
    await PointsRecordedHandler(PgProgression(app_pool), clock=Clock(JUNE))(entry(merchant, customer, points, at=JUNE))
    return customer


async def warnings_of(conn: Any, merchant: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT payload FROM outbox_events WHERE merchant_id = $1 AND topic = $2 ORDER BY seq",
        merchant,
        topics.VIP_TIER_DOWNGRADE_SCHEDULED,
    )
    return [r["payload"] for r in rows]


async def test_warned_once_per_deadline_with_the_points_needed(
    new_merchant: Any, tier_service: Any, app_pool: Any, superuser_conn: Any
) -> None:
    merchant = await merchant_with_programme(new_merchant, tier_service, app_pool, warning_days=30)
    quiet = await merchant_with_programme(new_merchant, tier_service, app_pool, warning_days=0)
    slipping = await gold_with(app_pool, merchant, 300)
    safe = await gold_with(app_pool, merchant, 1500)
    await gold_with(app_pool, quiet, 300)
    warnings = DowngradeWarnings(PgProgressionApi(app_pool), chunk_size=1)  # chunks of one: the keyset paging

    await warnings.run_once(DEADLINE - timedelta(days=31))  # not yet within 30 days
    assert await warnings_of(superuser_conn, merchant) == []
    await warnings.run_once(DEADLINE - timedelta(days=29))
    [warning] = await warnings_of(superuser_conn, merchant)
    assert (warning["customer_id"], warning["tier_id"], warning["target_tier_id"]) == (str(slipping), "gold", "silver")
    assert warning["points_needed"] == 700
    assert warning["deadline"] == int(DEADLINE.timestamp() * 1000)
    assert str(safe) not in {w["customer_id"] for w in await warnings_of(superuser_conn, merchant)}
    for days in (28, 1):  # later passes: once per deadline
        await warnings.run_once(DEADLINE - timedelta(days=days))
    assert len(await warnings_of(superuser_conn, merchant)) == 1
    assert await warnings_of(superuser_conn, quiet) == []


async def test_backlog_gauges(app_pool: Any, superuser_conn: Any, new_merchant: Any, tier_service: Any) -> None:
    merchant = await merchant_with_programme(new_merchant, tier_service, app_pool, warning_days=0)
    await gold_with(app_pool, merchant, 10)
    at = DEADLINE + timedelta(days=2)
    await DowngradeWarnings(PgProgressionApi(app_pool)).refresh_backlog(at)
    due, oldest = await superuser_conn.fetchrow(
        "SELECT count(*), min(deadline) FROM customer_tiers WHERE deadline <= $1", at
    )
    assert due >= 1
    assert metrics.DUE_BACKLOG._value.get() == due
    assert metrics.OLDEST_OVERDUE_SECONDS._value.get() == (at - oldest).total_seconds()
