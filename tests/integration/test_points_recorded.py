"""points.recorded on the real database: upgrades at once (skipping tiers), no event when nothing
moves, duplicates change nothing, redeem/expire never lower progress, a reversal follows the
programme, late events count in their own period, unknown merchants and bad values are rejected."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from campaign_service import topics
from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.events.points_recorded import PointsRecordedHandler
from campaign_service.events.ports import InboundEvent, Rejected

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def entry(
    merchant: uuid.UUID,
    customer: uuid.UUID,
    qualifying: int,
    *,
    kind: str = "earn",
    at: datetime = NOW,
    event_id: uuid.UUID | None = None,
) -> InboundEvent:
    payload = {
        "event_id": event_id or uuid.uuid4(),
        "merchant_id": merchant,
        "customer_id": customer,
        "entry_id": uuid.uuid4(),
        "type": kind,
        "points": qualifying,
        "qualifying_points": qualifying,
        "reverses_entry_id": None,
        "occurred_at": at,
        "correlation_id": "corr-1",
    }
    return InboundEvent(topics.POINTS_RECORDED, f"{merchant}:{customer}", payload, {})


async def tier_of(conn: Any, merchant: uuid.UUID, customer: uuid.UUID) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT tier_id FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
    )
    return value


async def announced(conn: Any, merchant: uuid.UUID, customer: uuid.UUID) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT payload FROM outbox_events WHERE merchant_id = $1 AND topic = $2 AND key = $3 ORDER BY seq",
        merchant,
        topics.VIP_TIER_ASSIGNED,
        f"{merchant}:{customer}",
    )
    return [r["payload"] for r in rows]


async def history(conn: Any, merchant: uuid.UUID, customer: uuid.UUID) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT from_tier_id, tier_id, direction, reason, qualifying_points, cause_event_id"
        " FROM customer_tier_history WHERE merchant_id = $1 AND customer_id = $2 ORDER BY id",
        merchant,
        customer,
    )
    return [tuple(r) for r in rows]


def handler(app_pool: Any, clock: Clock | None = None) -> PointsRecordedHandler:
    return PointsRecordedHandler(PgProgression(app_pool), clock=clock or Clock())


async def test_crossing_thresholds_upgrades_at_once_skipping_tiers_and_announces_the_move(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant, customer = await ladder_merchant(), uuid.uuid4()
    h = handler(app_pool)
    first = entry(merchant, customer, 300)
    assert await h.batch([first]) == [None]
    assert await tier_of(superuser_conn, merchant, customer) == "basic"  # no tier yet: the default
    jump = entry(merchant, customer, 6000)
    assert await h.batch([jump]) == [None]
    assert await tier_of(superuser_conn, merchant, customer) == "gold"  # silver skipped
    events = await announced(superuser_conn, merchant, customer)
    assert [(e["previous_tier_id"], e["tier_id"], e["direction"], e["reason"], e["bonus_points"]) for e in events] == [
        (None, "basic", "initial", "default", 0),
        ("basic", "gold", "up", "threshold_reached", 500),
    ]
    assert events[1]["cause_event_id"] == str(jump.payload["event_id"])
    assert await history(superuser_conn, merchant, customer) == [
        (None, "basic", "initial", "default", 300, first.payload["event_id"]),
        ("basic", "gold", "up", "threshold_reached", 6300, jump.payload["event_id"]),
    ]


async def test_no_event_and_no_history_when_the_tier_does_not_change(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant, customer = await ladder_merchant(), uuid.uuid4()
    h = handler(app_pool)
    await h.batch([entry(merchant, customer, 1500)])
    await h.batch([entry(merchant, customer, 100), entry(merchant, customer, 200)])
    assert await tier_of(superuser_conn, merchant, customer) == "silver"
    assert len(await announced(superuser_conn, merchant, customer)) == 1
    assert len(await history(superuser_conn, merchant, customer)) == 1
    assert (
        await superuser_conn.fetchval(
            "SELECT sum(points) FROM qualifying_points_daily WHERE merchant_id = $1 AND customer_id = $2",
            merchant,
            customer,
        )
        == 1800
    )


async def test_a_duplicate_three_times_changes_nothing_the_second_time(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant, customer = await ladder_merchant(), uuid.uuid4()
    h = handler(app_pool)
    e = entry(merchant, customer, 900)
    assert await h.batch([e, e]) == [None, None]
    assert await h.batch([e]) == [None]
    assert (
        await superuser_conn.fetchval(
            "SELECT sum(points) FROM qualifying_points_daily WHERE merchant_id = $1 AND customer_id = $2",
            merchant,
            customer,
        )
        == 900
    )
    assert len(await announced(superuser_conn, merchant, customer)) == 1


async def test_redeem_and_expire_never_lower_progress(app_pool: Any, ladder_merchant: Any, superuser_conn: Any) -> None:
    merchant, customer = await ladder_merchant(reversal_downgrades_now=True), uuid.uuid4()
    h = handler(app_pool)
    await h.batch([entry(merchant, customer, 1200)])
    await h.batch([entry(merchant, customer, -800, kind="redeem"), entry(merchant, customer, -300, kind="expire")])
    assert await tier_of(superuser_conn, merchant, customer) == "silver"
    await h.batch([entry(merchant, customer, 3800)])  # 1200 + 3800: gold, redeem/expire did not count
    assert await tier_of(superuser_conn, merchant, customer) == "gold"


async def test_a_reversal_downgrades_at_once_only_when_the_programme_says_so(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    now_merchant = await ladder_merchant(reversal_downgrades_now=True)
    later_merchant = await ladder_merchant(reversal_downgrades_now=False)
    h = handler(app_pool)
    for merchant in (now_merchant, later_merchant):
        customer = uuid.uuid4()
        await h.batch([entry(merchant, customer, 5200)])
        await h.batch([entry(merchant, customer, -4500, kind="reverse")])
        expected = "basic" if merchant == now_merchant else "gold"
        assert await tier_of(superuser_conn, merchant, customer) == expected
        if merchant == now_merchant:
            assert (await history(superuser_conn, merchant, customer))[-1][:4] == ("gold", "basic", "down", "reversal")


async def test_late_events_count_in_the_period_of_occurred_at(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await ladder_merchant(window_kind="calendar_year", time_zone="America/New_York",
                                     downgrade_policy="to_qualified")  # fmt: skip
    customer = uuid.uuid4()
    h = handler(app_pool, Clock(datetime(2027, 1, 1, 3, 0, tzinfo=UTC)))  # 31 Dec 22:00 in New York
    late = datetime(2027, 1, 1, 2, 0, tzinfo=UTC)  # still 2026 in New York
    await h.batch([entry(merchant, customer, 700, at=late), entry(merchant, customer, 600, at=NOW)])
    days = await superuser_conn.fetch(
        "SELECT day, points FROM qualifying_points_daily WHERE merchant_id = $1 AND customer_id = $2 ORDER BY day",
        merchant,
        customer,
    )
    assert [(str(r["day"]), r["points"]) for r in days] == [("2026-06-15", 600), ("2026-12-31", 700)]
    assert await tier_of(superuser_conn, merchant, customer) == "silver"  # both in New York's 2026
    deadline = await superuser_conn.fetchval(
        "SELECT deadline FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
    )
    assert deadline == datetime(2027, 1, 1, 5, 0, tzinfo=UTC)  # 1 Jan 2027 00:00 in New York


async def test_unknown_merchants_and_bad_values_are_rejected_alone(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant, customer = await ladder_merchant(), uuid.uuid4()
    good = entry(merchant, customer, 1000)
    unknown = entry(uuid.uuid4(), customer, 1000)
    negative_earn = entry(merchant, customer, -5)
    raising_reversal = entry(merchant, customer, 5, kind="reverse")
    huge = entry(merchant, customer, 10**13)
    future = entry(merchant, customer, 5, at=NOW + timedelta(days=3))
    outcomes = await handler(app_pool).batch([good, unknown, negative_earn, raising_reversal, huge, future])
    assert outcomes[0] is None
    reasons = [o.reason if isinstance(o, Rejected) else o for o in outcomes[1:]]
    assert reasons == ["unknown_merchant", "out_of_range", "out_of_range", "out_of_range", "out_of_range"]
    assert await tier_of(superuser_conn, merchant, customer) == "silver"
    assert (
        await superuser_conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE event_id = $1", unknown.payload["event_id"]
        )
        == 0
    )


async def test_one_batch_over_many_merchants_is_applied_per_merchant(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchants = [await ladder_merchant() for _ in range(5)]
    customers = {m: uuid.uuid4() for m in merchants}
    batch = [entry(m, customers[m], 1000 * (i + 1)) for i, m in enumerate(merchants)]
    assert await handler(app_pool).batch(batch) == [None] * 5
    tiers = [await tier_of(superuser_conn, m, customers[m]) for m in merchants]
    assert tiers == ["silver", "silver", "silver", "silver", "gold"]


async def test_a_tier_changed_between_batches_counts_at_once(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    """The handler reuses each merchant's programme and ladder objects across batches only while
    the rows read in the batch's transaction are the same."""
    merchant, customer = await ladder_merchant(), uuid.uuid4()
    h = handler(app_pool)
    assert await h.batch([entry(merchant, customer, 600)]) == [None]
    assert await tier_of(superuser_conn, merchant, customer) == "basic"
    await superuser_conn.execute(
        "UPDATE vip_tiers SET min_points = 700 WHERE merchant_id = $1 AND tier_id = 'silver'", merchant
    )
    assert await h.batch([entry(merchant, customer, 200)]) == [None]
    assert await tier_of(superuser_conn, merchant, customer) == "silver"  # 800 >= the new 700
