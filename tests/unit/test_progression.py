"""Progression rules without I/O: windows in the merchant's zone, thresholds, deadlines, policies,
entry bonus; and a hypothesis property: for any sequence of ledger entries and clock moves, the
engine (domain rules over per-day buckets) holds the tier a straightforward reference evaluation
of the same rules (over the raw entry list) says."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign_service.domain.errors import InvalidArgument
from campaign_service.domain.progression import (
    Ladder,
    Level,
    Programme,
    TierState,
    at_deadline,
    counted_points,
    on_entry,
    window_sum,
)

LADDER = Ladder([Level("basic", 0, 0, True), Level("silver", 1000, 100), Level("gold", 5000, 500)])
T0 = datetime(2026, 3, 10, 12, tzinfo=UTC)


def test_calendar_year_window_and_period_follow_the_merchant_zone() -> None:
    p = Programme(window="calendar_year", time_zone="America/New_York", downgrade_policy="to_qualified", grace_days=5)
    late = datetime(2027, 1, 1, 3, tzinfo=UTC)  # 22:00 on 31 December in New York
    assert p.local_day(late) == date(2026, 12, 31)
    assert p.window_start(late) == date(2026, 1, 1)
    end = p.period_end(late)
    assert end == datetime(2027, 1, 1, 5, tzinfo=UTC)
    assert p.deadline(end) == datetime(2027, 1, 6, 5, tzinfo=UTC)
    assert p.assessment_window(end) == (date(2026, 1, 1), date(2027, 1, 1))


def test_rolling_months_clamp_to_the_end_of_the_month() -> None:
    p = Programme(window="rolling_months", window_months=1, downgrade_policy="one_down")
    t = datetime(2026, 1, 31, 10, tzinfo=UTC)
    assert p.period_end(t) == datetime(2026, 2, 28, tzinfo=UTC)
    assert p.window_start(datetime(2026, 3, 31, tzinfo=UTC)) == date(2026, 3, 1)


def test_upgrade_skips_tiers_and_earning_never_downgrades() -> None:
    p = Programme()
    first = on_entry(p, LADDER, None, 200, T0)
    assert first.move is not None
    assert (first.move.tier_id, first.move.reason) == ("basic", "default")
    assert first.state is not None
    up = on_entry(p, LADDER, first.state, 7000, T0)
    assert up.move is not None
    assert (up.move.previous_tier_id, up.move.tier_id, up.move.bonus_points) == (
        "basic",
        "gold",
        500,
    )
    assert up.state is not None
    assert on_entry(p, LADDER, up.state, 10, T0).move is None  # lower sum, earning: no downgrade


def test_once_ever_bonus_is_paid_on_the_first_entry_only() -> None:
    for policy, second_bonus in (("once_ever", 0), ("every_promotion", 500)):
        p = Programme(entry_bonus=policy)  # type: ignore[arg-type]
        state = TierState("silver", T0, held_tiers=frozenset({"basic", "silver", "gold"}))
        move = on_entry(p, LADDER, state, 6000, T0).move
        assert move is not None
        assert move.bonus_points == second_bonus


def test_a_manual_floor_holds_until_it_expires() -> None:
    p = Programme(window="calendar_year", downgrade_policy="to_qualified")
    end = datetime(2027, 1, 1, tzinfo=UTC)
    state = TierState("gold", T0, period_end=end, deadline=end, floor_tier_id="silver", floor_until=end + timedelta(1))
    held = at_deadline(p, LADDER, state, 0, end)
    assert held.move is not None
    assert held.move.tier_id == "silver"
    after = at_deadline(p, LADDER, TierState("gold", T0, period_end=end, deadline=end, floor_tier_id="silver",
                                             floor_until=end), 0, end)  # fmt: skip
    assert after.move is not None
    assert after.move.tier_id == "basic"


def test_redeem_and_expire_never_lower_progress() -> None:
    assert counted_points("redeem", -500) == 0
    assert counted_points("expire", -5) == 0
    assert counted_points("reverse", -5) == -5
    assert counted_points("adjust", -5) == -5


@pytest.mark.parametrize(
    "programme",
    [
        Programme(window="rolling_months"),
        Programme(window="rolling_months", window_months=37),
        Programme(window_months=3),
        Programme(time_zone="Mars/Olympus"),
        Programme(grace_days=366),
        Programme(downgrade_policy="sometimes"),  # type: ignore[arg-type]
    ],
)
def test_bad_programmes_are_refused_with_the_field(programme: Programme) -> None:
    with pytest.raises(InvalidArgument) as err:
        programme.validated()
    assert err.value.violations[0].field.startswith("program.")


# ----------------------------------------------------------------------------------------------
# The property. The reference keeps every entry and recomputes everything from the rules as
# written in the module docstring, with its own calendar arithmetic.

RANKS = {"basic": 0, "silver": 1, "gold": 2}
NAMES = ["basic", "silver", "gold"]
THRESHOLDS = [0, 1000, 5000]


def ref_add_months(d: date, months: int) -> date:
    """Whole months later (earlier), the day clamped to the target month's length."""
    y, m = d.year + (d.month - 1 + months) // 12, (d.month - 1 + months) % 12 + 1
    last = (date(y + (m == 12), m % 12 + 1, 1) - timedelta(days=1)).day
    return date(y, m, min(d.day, last))


def ref_reached(points: int) -> int:
    return max(i for i, t in enumerate(THRESHOLDS) if t <= max(points, 0)) if points >= 0 else 0


@dataclass
class Reference:
    p: Programme
    entries: list[tuple[date, int]] = field(default_factory=list)
    tier: int | None = None
    period_end: date | None = None  # local day the period ends (exclusive)

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.p.time_zone)

    def day(self, t: datetime) -> date:
        return t.astimezone(self.zone()).date()

    def months(self) -> int:
        return 12 if self.p.window == "calendar_year" else self.p.window_months or 0

    def deadline(self) -> datetime | None:
        if self.period_end is None or self.p.window == "lifetime" or self.p.downgrade_policy == "never":
            return None
        midnight = datetime(self.period_end.year, self.period_end.month, self.period_end.day, tzinfo=self.zone())
        return midnight.astimezone(UTC) + timedelta(days=self.p.grace_days)

    def live_sum(self, now: datetime) -> int:
        today = self.day(now)
        if self.p.window == "lifetime":
            return sum(q for _, q in self.entries)
        if self.p.window == "calendar_year":
            return sum(q for d, q in self.entries if d.year >= today.year)
        first = ref_add_months(today, -self.months()) + timedelta(days=1)
        return sum(q for d, q in self.entries if d >= first)

    def new_period(self, now: datetime) -> None:
        today = self.day(now)
        if self.p.window == "calendar_year":
            self.period_end = date(today.year + 1, 1, 1)
        elif self.p.window == "rolling_months":
            self.period_end = ref_add_months(today, self.months())

    def entry(self, now: datetime, occurred: datetime, kind: str, q: int) -> None:
        counted = max(q, 0) if kind in ("redeem", "expire") else q
        self.entries.append((self.day(occurred), counted))
        reached = ref_reached(self.live_sum(now))
        if self.tier is None:
            self.tier = max(reached, 0)
            self.new_period(now)
        elif reached > self.tier:
            self.tier = reached
            self.new_period(now)
        elif kind == "reverse" and self.p.reversal_downgrades_now and reached < self.tier:
            self.tier = reached

    def advance(self, now: datetime) -> None:
        while (deadline := self.deadline()) is not None and deadline <= now:
            assert self.period_end is not None
            assert self.tier is not None
            first = ref_add_months(self.period_end, -self.months())
            reached = ref_reached(sum(q for d, q in self.entries if first <= d < self.period_end))
            if reached > self.tier or self.p.downgrade_policy == "to_qualified":
                self.tier = reached
            elif self.p.downgrade_policy == "one_down":
                self.tier = max(reached, self.tier - 1)
            self.period_end = ref_add_months(self.period_end, self.months())


@dataclass
class Engine:
    """The domain rules driven as the consumer and the scheduler drive them (day buckets)."""

    p: Programme
    buckets: dict[date, int] = field(default_factory=dict)
    state: TierState | None = None

    def entry(self, now: datetime, occurred: datetime, kind: str, q: int) -> None:
        day = self.p.local_day(occurred)
        self.buckets[day] = self.buckets.get(day, 0) + counted_points(kind, q)
        points = window_sum(sorted(self.buckets.items()), self.p.window_start(now))
        self.state = on_entry(self.p, LADDER, self.state, points, now, reversal=kind == "reverse").state

    def advance(self, now: datetime) -> None:
        while self.state is not None and self.state.deadline is not None and self.state.deadline <= now:
            assert self.state.period_end is not None
            first, end = self.p.assessment_window(self.state.period_end)
            points = window_sum(sorted(self.buckets.items()), first, end)
            self.state = at_deadline(self.p, LADDER, self.state, points, now).state


programmes = st.builds(
    Programme,
    window=st.sampled_from(["lifetime", "calendar_year", "rolling_months"]),
    time_zone=st.sampled_from(["UTC", "Pacific/Auckland", "America/Los_Angeles"]),
    downgrade_policy=st.sampled_from(["never", "to_qualified", "one_down"]),
    grace_days=st.integers(0, 40),
    reversal_downgrades_now=st.booleans(),
).map(lambda p: Programme(**{**p.__dict__, "window_months": 3}) if p.window == "rolling_months" else p)

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("entry"),
            st.sampled_from(["earn", "earn", "redeem", "expire", "adjust", "reverse"]),
            st.integers(0, 3000),
            st.integers(0, 40),  # days late
        ),
        st.tuples(st.just("advance"), st.integers(1, 200)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(programmes, steps)
def test_the_engine_holds_the_tier_of_a_reference_evaluation(programme: Programme, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    now = T0
    engine, reference = Engine(programme), Reference(programme)
    for op in ops:
        if op[0] == "advance":
            now += timedelta(days=op[1], hours=op[1] % 7)
            engine.advance(now)
            reference.advance(now)
        else:
            _, kind, amount, late = op
            q = -amount if kind in ("reverse", "redeem", "expire") else amount
            occurred = now - timedelta(days=late, minutes=late)
            engine.entry(now, occurred, kind, q)
            reference.entry(now, occurred, kind, q)
        held = engine.state.tier_id if engine.state else None
        assert held == (NAMES[reference.tier] if reference.tier is not None else None), (op, now)
        assert (engine.state.deadline if engine.state else None) == reference.deadline()
