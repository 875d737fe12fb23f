"""The deadline scheduler on the real database, with a controllable clock: the policy applied at
the deadline (and not before, grace included), exactly one history row and one event per move,
two replicas never moving a customer twice, a chunk that dies before commit losing nothing, and
a customer held by a points batch skipped until it is free."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.events.scheduler import DeadlineScheduler, SchedulerSettings
from campaign_service.service.errors import Unavailable
from tests.integration.test_points_recorded import Clock, announced, entry, handler, history, tier_of

JAN_2027 = datetime(2027, 1, 2, tzinfo=UTC)
JAN_2028 = datetime(2028, 1, 2, tzinfo=UTC)


def scheduler(app_pool: Any, **settings: Any) -> DeadlineScheduler:
    progression = PgProgression(app_pool)
    return DeadlineScheduler(progression, progression, SchedulerSettings(**settings))


async def gold_customer(app_pool: Any, merchant: uuid.UUID) -> uuid.UUID:
    customer = uuid.uuid4()
    assert await handler(app_pool).batch([entry(merchant, customer, 5200)]) == [None]  # gold, in 2026
    return customer


@pytest.mark.parametrize(
    ("policy", "grace", "expected", "reason"),
    [
        ("to_qualified", 0, "basic", "period_end"),
        ("one_down", 0, "silver", "period_end"),
        ("to_qualified", 30, "basic", "grace_expired"),
    ],
)
async def test_calendar_year_deadline_applies_the_policy_once_with_history_and_one_event(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any, policy: str, grace: int, expected: str, reason: str
) -> None:
    merchant = await ladder_merchant(window_kind="calendar_year", downgrade_policy=policy, grace_days=grace)
    customer = await gold_customer(app_pool, merchant)
    s = scheduler(app_pool)
    # Earned in 2026: kept through 2027 (re-assessed on 2026's points at the 2027 deadline).
    await s.run_once(JAN_2027 + timedelta(days=grace))
    assert await tier_of(superuser_conn, merchant, customer) == "gold"
    assert len(await announced(superuser_conn, merchant, customer)) == 1
    if grace:  # not before the grace has passed
        await s.run_once(datetime(2028, 1, 15, tzinfo=UTC))
        assert await tier_of(superuser_conn, merchant, customer) == "gold"
    # Nothing earned in 2027: at the 2028 deadline the policy applies.
    await s.run_once(JAN_2028 + timedelta(days=grace))
    assert await tier_of(superuser_conn, merchant, customer) == expected
    assert (await history(superuser_conn, merchant, customer))[-1][:4] == ("gold", expected, "down", reason)
    events = await announced(superuser_conn, merchant, customer)
    assert [(e["previous_tier_id"], e["tier_id"], e["direction"], e["reason"]) for e in events[1:]] == [
        ("gold", expected, "down", reason)
    ]
    await s.run_once(JAN_2028 + timedelta(days=grace + 1))  # again: nothing more
    assert len(await announced(superuser_conn, merchant, customer)) == 2


async def test_points_of_the_period_keep_the_tier_and_never_and_lifetime_are_never_due(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    keeper_merchant = await ladder_merchant(window_kind="calendar_year", downgrade_policy="to_qualified")
    never_merchant = await ladder_merchant(window_kind="calendar_year", downgrade_policy="never")
    lifetime_merchant = await ladder_merchant()
    keeper = await gold_customer(app_pool, keeper_merchant)
    others = [(m, await gold_customer(app_pool, m)) for m in (never_merchant, lifetime_merchant)]
    h = handler(app_pool, Clock(datetime(2027, 6, 1, tzinfo=UTC)))
    await h.batch([entry(keeper_merchant, keeper, 5000, at=datetime(2027, 5, 1, tzinfo=UTC))])
    s = scheduler(app_pool)
    await s.run_once(JAN_2027)
    await s.run_once(JAN_2028)
    assert await tier_of(superuser_conn, keeper_merchant, keeper) == "gold"
    for merchant, customer in others:
        assert (
            await superuser_conn.fetchval(
                "SELECT deadline FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
            )
            is None
        )
        assert await tier_of(superuser_conn, merchant, customer) == "gold"


async def test_two_replicas_never_move_a_customer_twice(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchants = [await ladder_merchant(window_kind="calendar_year", downgrade_policy="to_qualified") for _ in range(3)]
    customers = [(m, uuid.uuid4()) for m in merchants for _ in range(40)]
    await handler(app_pool).batch([entry(m, c, 5200) for m, c in customers])
    a, b = scheduler(app_pool, chunk_size=7), scheduler(app_pool, chunk_size=7)
    await asyncio.gather(a.run_once(JAN_2027), b.run_once(JAN_2027))
    results = await asyncio.gather(a.run_once(JAN_2028), b.run_once(JAN_2028))
    assert sum(r.moved for r in results) == len(customers)
    for m, c in customers:
        assert [h[:3] for h in await history(superuser_conn, m, c)] == [
            (None, "gold", "initial"),
            ("gold", "basic", "down"),
        ]
        assert len(await announced(superuser_conn, m, c)) == 2


class DiesBeforeCommit:
    """A progression whose transactions fail after writing (a replica killed mid-chunk: its
    transaction never commits)."""

    def __init__(self, inner: PgProgression) -> None:
        self._inner = inner

    def __call__(self, merchants: Any) -> Any:
        inner = self._inner(merchants)

        class Dying:
            async def __aenter__(self) -> Any:
                self.tx = await inner.__aenter__()
                self.real = self.tx.reassess_due

                async def reassess_due(*args: Any) -> Any:
                    await self.real(*args)  # the chunk's one statement ran: moves, history, outbox written
                    raise ConnectionResetError("killed")

                self.tx.reassess_due = reassess_due  # type: ignore[method-assign,assignment]  # the fault: commit never happens
                return self.tx

            async def __aexit__(self, *exc: Any) -> Any:
                return await inner.__aexit__(*exc)

        return Dying()


async def test_a_chunk_that_dies_before_commit_loses_and_duplicates_nothing(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await ladder_merchant(window_kind="calendar_year", downgrade_policy="to_qualified")
    customers = [uuid.uuid4() for _ in range(10)]
    await handler(app_pool).batch([entry(merchant, c, 5200) for c in customers])
    await scheduler(app_pool).run_once(JAN_2027)
    progression = PgProgression(app_pool)
    with pytest.raises(Unavailable):  # the lost connection, as the unit of work reports it
        await DeadlineScheduler(DiesBeforeCommit(progression), progression).run_once(JAN_2028)
    assert {await tier_of(superuser_conn, merchant, c) for c in customers} == {"gold"}
    result = await scheduler(app_pool).run_once(JAN_2028)
    assert result.moved == 10
    for c in customers:
        assert len(await announced(superuser_conn, merchant, c)) == 2


async def test_a_customer_held_by_a_points_batch_is_skipped_then_moved_next_pass(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await ladder_merchant(window_kind="calendar_year", downgrade_policy="to_qualified")
    held, free = uuid.uuid4(), uuid.uuid4()
    await handler(app_pool).batch([entry(merchant, held, 5200), entry(merchant, free, 5200)])
    s = scheduler(app_pool)
    await s.run_once(JAN_2027)
    async with app_pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
        await conn.execute(
            "SELECT 1 FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2 FOR UPDATE", merchant, held
        )
        result = await s.run_once(JAN_2028)
        assert result.moved == 1
    assert await tier_of(superuser_conn, merchant, held) == "gold"
    assert await tier_of(superuser_conn, merchant, free) == "basic"
    await s.run_once(JAN_2028)
    assert await tier_of(superuser_conn, merchant, held) == "basic"


async def test_the_tier_reference_is_checked_per_statement_as_the_foreign_key_was(
    app_pool: Any, ladder_merchant: Any
) -> None:
    """Migration 0021 replaced the per-row foreign key customer_tiers -> vip_tiers by statement
    triggers: an unknown tier is still refused, and so is deleting (or renaming) a tier a customer holds."""
    import asyncpg

    merchant = await ladder_merchant(window_kind="calendar_year", downgrade_policy="to_qualified")
    customer = await gold_customer(app_pool, merchant)
    async with app_pool.acquire() as conn:
        for statement in (
            "UPDATE customer_tiers SET tier_id = 'platinum' WHERE merchant_id = $1 AND customer_id = $2",
            "DELETE FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 'gold' AND $2::uuid IS NOT NULL",
            "UPDATE vip_tiers SET tier_id = 'gold2' WHERE merchant_id = $1 AND tier_id = 'gold' AND $2::uuid IS NOT NULL",
        ):
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                async with conn.transaction():
                    await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
                    await conn.execute(statement, merchant, customer)
        async with conn.transaction():  # a tier nobody holds may go
            await conn.execute("SELECT set_config('app.merchant_id', $1, true)", str(merchant))
            assert await conn.execute(
                "DELETE FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 'silver'", merchant
            ) == ("DELETE 1")


@pytest.mark.parametrize(
    "programme",
    [
        {"window_kind": "calendar_year", "downgrade_policy": "to_qualified"},
        {
            "window_kind": "rolling_months",
            "window_months": 3,
            "downgrade_policy": "one_down",
            "grace_days": 10,
            "time_zone": "America/New_York",
        },
        {
            "window_kind": "calendar_year",
            "downgrade_policy": "one_down",
            "time_zone": "Asia/Kolkata",
            "entry_bonus": "every_promotion",
        },
    ],
)
async def test_the_set_based_chunk_decides_as_the_domain_rules(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any, programme: dict[str, Any]
) -> None:
    """The scheduler's one SQL statement applies domain.progression.at_deadline: the same state,
    move, bonus and event for states covering each tier, floors (active, expired, none), held
    tiers, and points just inside and outside the assessed window."""
    import itertools

    from campaign_service.adapters.postgres.progression import programme_from_row
    from campaign_service.domain.progression import Ladder, Level, TierState, at_deadline

    merchant = await ladder_merchant(**programme)
    row = await superuser_conn.fetchrow("SELECT * FROM tier_programs WHERE merchant_id = $1", merchant)
    prog = programme_from_row(row)
    ladder = Ladder([Level("basic", 0, 0, True), Level("silver", 1000), Level("gold", 5000, 500)])
    period_end = prog._midnight(datetime(2026, 12, 1).date())
    now = period_end + timedelta(days=prog.grace_days, hours=1)
    first, end = prog.assessment_window(period_end)
    states: dict[uuid.UUID, tuple[TierState, int]] = {}
    cases = itertools.product(
        ("basic", "silver", "gold"),
        (None, ("silver", None), ("gold", now + timedelta(days=1)), ("gold", now - timedelta(days=1))),
        (frozenset(), frozenset({"gold", "silver"})),
        ((0, 0), (1200, 0), (6000, 0), (800, 4500), (-50, 0)),
    )
    for tier, floor, held, (inside, outside) in cases:
        c = uuid.uuid4()
        state = TierState(
            tier_id=tier,
            since=datetime(2026, 1, 5, tzinfo=UTC),
            period_end=period_end,
            deadline=prog.deadline(period_end),
            floor_tier_id=floor[0] if floor else None,
            floor_until=floor[1] if floor else None,
            held_tiers=held | {tier},
            program_version=1,
        )
        await superuser_conn.execute(
            "INSERT INTO customer_tiers (merchant_id, customer_id, tier_id, assigned_at, source, period_end, deadline,"
            " floor_tier_id, floor_until, held_tiers, program_version)"
            " VALUES ($1, $2, $3, $4, 'manual', $5, $6, $7, $8, $9, 1)",
            merchant, c, tier, state.since, period_end, state.deadline, state.floor_tier_id, state.floor_until,
            sorted(state.held_tiers),
        )  # fmt: skip
        for day, pts in ((first, inside), (end, outside), (first - timedelta(days=1), 7000)):
            if pts:
                await superuser_conn.execute(
                    "INSERT INTO qualifying_points_daily VALUES ($1, $2, $3, $4)", merchant, c, day, pts
                )
        states[c] = (state, inside)
    result = await scheduler(app_pool, chunk_size=17).run_once(now)
    assert result.reassessed == len(states)
    stamp = now.replace(microsecond=0)
    for c, (state, points) in states.items():
        expected = at_deadline(prog, ladder, state, points, stamp)
        got = await superuser_conn.fetchrow(
            "SELECT * FROM customer_tiers WHERE merchant_id = $1 AND customer_id = $2", merchant, c
        )
        assert expected.state is not None
        assert (got["tier_id"], got["qualifying_points"], got["period_end"], got["deadline"]) == (
            expected.state.tier_id,
            expected.state.qualifying_points,
            expected.state.period_end,
            expected.state.deadline,
        ), (state, points)
        assert (frozenset(got["held_tiers"]), got["program_version"]) == (
            expected.state.held_tiers,
            expected.state.program_version,
        )
        events = await announced(superuser_conn, merchant, c)
        move = expected.move
        if move is None:
            assert events == []
            assert got["assigned_at"] == state.since
            continue
        assert got["assigned_at"] == stamp
        assert (got["change_direction"], got["change_reason"]) == (
            move.direction,
            move.reason,
        )
        [event] = events
        assert (
            event["previous_tier_id"],
            event["tier_id"],
            event["direction"],
            event["reason"],
            event["bonus_points"],
            event["program_version"],
        ) == (move.previous_tier_id, move.tier_id, move.direction, move.reason, move.bonus_points, prog.version)
