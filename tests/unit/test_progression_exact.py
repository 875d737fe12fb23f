"""Progression rules pinned to exact values: every field of the state and the move each branch of
`on_entry` and `at_deadline` produces, the ladder's ordering and lookups, each programme
violation's field and message. The property in test_progression.py compares tiers only; these
say what the history row, the event and the stored deadline get."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from campaign_service.domain.errors import FieldViolation, InvalidArgument
from campaign_service.domain.progression import (
    Evaluation,
    Ladder,
    Level,
    Move,
    Programme,
    TierState,
    add_months,
    at_deadline,
    counted_points,
    on_entry,
    window_sum,
    zone_violation,
)

BASIC, SILVER, GOLD = Level("basic", 0, 10, True), Level("silver", 1000, 100), Level("gold", 5000, 500)
LADDER = Ladder([GOLD, BASIC, SILVER])
NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)
YEARLY = Programme(window="calendar_year", downgrade_policy="to_qualified", version=4)
END_2026 = datetime(2027, 1, 1, tzinfo=UTC)
END_2027 = datetime(2028, 1, 1, tzinfo=UTC)


def held(tier: str, *, points: int = 0, period_end: datetime | None = END_2026, **kw: object) -> TierState:
    return TierState(
        tier_id=tier,
        since=NOW - timedelta(days=30),
        qualifying_points=points,
        period_end=period_end,
        deadline=period_end,
        held_tiers=frozenset({tier}),
        program_version=1,
        **kw,  # type: ignore[arg-type]
    )


# -- the ladder --------------------------------------------------------------------------------


def test_the_ladder_orders_by_threshold_then_id() -> None:
    twins = Ladder([Level("b", 100), Level("a", 100), Level("z", 0)])
    assert [lv.tier_id for lv in twins.levels] == ["z", "a", "b"]
    assert [twins.rank(t) for t in ("z", "a", "b")] == [0, 1, 2]
    assert twins.qualified(100) == Level("b", 100)  # the highest of equal thresholds, as EvaluateTier


def test_ladder_lookups() -> None:
    assert LADDER.rank(None) == -1
    assert LADDER.rank("platinum") == -1
    assert LADDER.rank("gold") == 2
    assert LADDER.get("silver") == SILVER
    assert LADDER.get("platinum") is None
    assert LADDER.get("basic") == BASIC
    assert LADDER.qualified(999) == BASIC
    assert LADDER.qualified(1000) == SILVER
    assert LADDER.qualified(4999) == SILVER
    assert LADDER.qualified(5000) == GOLD
    assert Ladder([SILVER]).qualified(999) is None
    assert LADDER.default == BASIC
    assert Ladder([SILVER, GOLD]).default is None
    assert LADDER.lowest == BASIC
    assert bool(LADDER) is True


def test_an_empty_ladder() -> None:
    empty = Ladder([])
    assert bool(empty) is False
    assert empty.lowest is None
    assert empty.default is None
    assert empty.qualified(10**9) is None
    assert on_entry(Programme(), empty, None, 10**6, NOW) == Evaluation(None, None)


def test_a_floor_counts_until_it_expires() -> None:
    state = held("basic", floor_tier_id="silver", floor_until=NOW + timedelta(seconds=1))
    assert state.floor_rank(LADDER, NOW) == 1
    assert state.floor_rank(LADDER, NOW + timedelta(seconds=1)) == -1  # ends at floor_until
    assert held("basic", floor_tier_id="gold").floor_rank(LADDER, NOW + timedelta(days=9999)) == 2
    assert held("basic").floor_rank(LADDER, NOW) == -1


# -- a customer's first tier -------------------------------------------------------------------


def test_a_new_customer_gets_the_default_tier_with_no_bonus() -> None:
    got = on_entry(YEARLY, LADDER, None, 300, NOW)
    assert got == Evaluation(
        TierState(
            tier_id="basic",
            since=NOW,
            qualifying_points=300,
            period_end=END_2026,
            deadline=END_2026,
            held_tiers=frozenset({"basic"}),
            program_version=4,
        ),
        Move(None, "basic", "initial", "default", 0),
    )


def test_a_new_customer_above_the_default_starts_at_the_tier_reached_with_its_bonus() -> None:
    got = on_entry(YEARLY, LADDER, None, 1200, NOW)
    assert got.move == Move(None, "silver", "initial", "threshold_reached", 100)
    assert got.state is not None
    assert (got.state.tier_id, got.state.qualifying_points, got.state.held_tiers) == (
        "silver",
        1200,
        frozenset({"silver"}),
    )


def test_without_a_default_tier_a_new_customer_gets_what_the_points_reach_or_nothing() -> None:
    no_default = Ladder([Level("silver", 1000, 100), Level("gold", 5000, 500)])
    assert on_entry(Programme(), no_default, None, 999, NOW) == Evaluation(None, None)
    got = on_entry(Programme(), no_default, None, 1000, NOW)
    assert got.move == Move(None, "silver", "initial", "threshold_reached", 100)
    assert got.state is not None
    assert got.state.period_end is None
    assert got.state.deadline is None


def test_a_default_tier_above_the_points_reached_still_wins() -> None:
    high_default = Ladder([Level("entry", 0), Level("member", 500, 50, True), Level("vip", 2000, 200)])
    got = on_entry(Programme(), high_default, None, 100, NOW)
    assert got.move == Move(None, "member", "initial", "default", 0)
    same = on_entry(Programme(), high_default, None, 500, NOW)
    assert same.move == Move(None, "member", "initial", "default", 0)


# -- earning, reversing ------------------------------------------------------------------------


def test_an_upgrade_restarts_the_period_and_records_the_points_and_version() -> None:
    state = held("basic", points=200)
    got = on_entry(YEARLY, LADDER, state, 6000, NOW)
    assert got == Evaluation(
        TierState(
            tier_id="gold",
            since=NOW,
            qualifying_points=6000,
            period_end=END_2026,
            deadline=END_2026,
            held_tiers=frozenset({"basic", "gold"}),
            program_version=4,
        ),
        Move("basic", "gold", "up", "threshold_reached", 500),
    )


@pytest.mark.parametrize(("policy", "bonus"), [("once_ever", 0), ("every_promotion", 100)])
def test_re_entering_a_tier_pays_its_bonus_by_the_policy(policy: str, bonus: int) -> None:
    programme = Programme(entry_bonus=policy)  # type: ignore[arg-type]
    state = TierState("basic", NOW, held_tiers=frozenset({"basic", "silver"}))
    got = on_entry(programme, LADDER, state, 1000, NOW)
    assert got.move == Move("basic", "silver", "up", "threshold_reached", bonus)


def test_earning_below_the_next_threshold_only_updates_the_points() -> None:
    state = held("silver", points=1000)
    assert on_entry(YEARLY, LADDER, state, 4999, NOW) == Evaluation(
        TierState(
            tier_id="silver",
            since=state.since,
            qualifying_points=4999,
            period_end=END_2026,
            deadline=END_2026,
            held_tiers=frozenset({"silver"}),
            program_version=1,
        ),
        None,
    )


def test_a_reversal_waits_for_the_deadline_unless_the_programme_says_now() -> None:
    state = held("gold", points=6000)
    later = on_entry(YEARLY, LADDER, state, 1200, NOW, reversal=True)
    assert later.move is None
    assert later.state is not None
    assert (later.state.tier_id, later.state.qualifying_points) == ("gold", 1200)
    now = Programme(window="calendar_year", downgrade_policy="one_down", reversal_downgrades_now=True, version=2)
    got = on_entry(now, LADDER, state, 200, NOW, reversal=True)
    # to the tier the window still reaches (two down), whatever the policy; the period is kept
    assert got.move == Move("gold", "basic", "down", "reversal", 0)
    assert got.state is not None
    assert (got.state.period_end, got.state.deadline, got.state.qualifying_points) == (END_2026, END_2026, 200)
    assert got.state.held_tiers == {"gold", "basic"}


def test_a_reversal_stops_at_a_floor_and_a_non_reversal_never_downgrades() -> None:
    now = Programme(reversal_downgrades_now=True)
    floored = held("gold", floor_tier_id="silver")
    assert on_entry(now, LADDER, floored, 0, NOW, reversal=True).move == Move("gold", "silver", "down", "reversal", 0)
    held_at_floor = held("silver", floor_tier_id="silver")
    assert on_entry(now, LADDER, held_at_floor, 0, NOW, reversal=True).move is None
    assert on_entry(now, LADDER, held("gold"), 0, NOW).move is None


def test_negative_window_points_reach_nothing_but_are_recorded() -> None:
    now = Programme(reversal_downgrades_now=True)
    got = on_entry(now, LADDER, held("silver"), -50, NOW, reversal=True)
    assert got.move == Move("silver", "basic", "down", "reversal", 0)
    assert got.state is not None
    assert got.state.qualifying_points == -50


def test_a_tier_no_longer_on_the_ladder_is_left_for_any_tier_reached_never_moved_down() -> None:
    now = Programme(reversal_downgrades_now=True)
    got = on_entry(now, LADDER, held("retired"), 0, NOW, reversal=True)
    assert got.move == Move("retired", "basic", "up", "threshold_reached", 10)
    no_floor = Ladder([SILVER, GOLD])
    assert on_entry(now, no_floor, held("retired"), 0, NOW, reversal=True).move is None


# -- deadlines ---------------------------------------------------------------------------------


def test_at_a_deadline_without_rules_the_deadline_is_cleared() -> None:
    state = held("gold")
    assert at_deadline(Programme(), LADDER, state, 0, NOW) == Evaluation(
        TierState(
            tier_id="gold",
            since=state.since,
            period_end=END_2026,
            deadline=None,
            held_tiers=frozenset({"gold"}),
            program_version=1,
        ),
        None,
    )
    no_period = held("gold", period_end=None)
    assert at_deadline(YEARLY, LADDER, no_period, 0, NOW).state == no_period


@pytest.mark.parametrize(("grace", "reason"), [(0, "period_end"), (30, "grace_expired")])
def test_to_qualified_moves_to_what_the_period_reached(grace: int, reason: str) -> None:
    programme = Programme(window="calendar_year", downgrade_policy="to_qualified", grace_days=grace, version=9)
    state = held("gold", points=6000)
    got = at_deadline(programme, LADDER, state, 1500, NOW)
    assert got == Evaluation(
        TierState(
            tier_id="silver",
            since=NOW,
            qualifying_points=1500,
            period_end=END_2027,
            deadline=END_2027 + timedelta(days=grace),
            held_tiers=frozenset({"gold", "silver"}),
            program_version=9,
        ),
        Move("gold", "silver", "down", reason, 0),  # type: ignore[arg-type]
    )


def test_one_down_moves_a_single_tier() -> None:
    programme = Programme(window="calendar_year", downgrade_policy="one_down")
    assert at_deadline(programme, LADDER, held("gold"), 0, NOW).move == Move("gold", "silver", "down", "period_end", 0)
    assert at_deadline(programme, LADDER, held("silver"), 0, NOW).move == Move(
        "silver", "basic", "down", "period_end", 0
    )
    assert at_deadline(programme, LADDER, held("basic"), 0, NOW).move is None


def test_a_kept_tier_is_held_for_the_next_period() -> None:
    state = held("silver", points=3000)
    got = at_deadline(YEARLY, LADDER, state, 1000, NOW)
    assert got == Evaluation(
        TierState(
            tier_id="silver",
            since=state.since,
            qualifying_points=1000,
            period_end=END_2027,
            deadline=END_2027,
            held_tiers=frozenset({"silver"}),
            program_version=4,
        ),
        None,
    )


def test_late_points_of_the_period_upgrade_at_the_deadline() -> None:
    got = at_deadline(YEARLY, LADDER, held("silver"), 5000, NOW)
    assert got.move == Move("silver", "gold", "up", "threshold_reached", 500)
    assert got.state is not None
    assert got.state.period_end == END_2027


def test_a_floor_holds_at_the_deadline() -> None:
    state = held("gold", floor_tier_id="silver", floor_until=NOW + timedelta(days=1))
    assert at_deadline(YEARLY, LADDER, state, 0, NOW).move == Move("gold", "silver", "down", "period_end", 0)
    assert at_deadline(YEARLY, LADDER, state, 0, NOW + timedelta(days=1)).move == Move(
        "gold", "basic", "down", "period_end", 0
    )


# -- windows, sums, programme checks -------------------------------------------------------------


def test_has_deadlines_needs_a_window_and_a_policy() -> None:
    assert not Programme().has_deadlines
    assert not Programme(window="calendar_year").has_deadlines
    assert not Programme(downgrade_policy="one_down").has_deadlines
    assert Programme(window="rolling_months", window_months=3, downgrade_policy="one_down").has_deadlines


def test_window_edges() -> None:
    rolling = Programme(window="rolling_months", window_months=3, time_zone="Asia/Tokyo")
    instant = datetime(2026, 5, 31, 16, tzinfo=UTC)  # 1 June 01:00 in Tokyo
    assert rolling.window_start(instant) == date(2026, 3, 2)
    end = rolling.period_end(instant)
    assert end == datetime(2026, 8, 31, 15, tzinfo=UTC)
    assert end is not None
    assert rolling.next_period_end(end) == datetime(2026, 11, 30, 15, tzinfo=UTC)
    assert rolling.assessment_window(end) == (date(2026, 6, 1), date(2026, 9, 1))
    assert rolling.deadline(None) is None
    assert Programme().window_start(instant) is None
    assert Programme().period_end(instant) is None
    yearly = Programme(window="calendar_year", downgrade_policy="never")
    assert yearly.next_period_end(END_2026) == END_2027
    assert yearly.deadline(END_2026) is None


def test_add_months_crosses_years_both_ways() -> None:
    assert add_months(date(2026, 12, 15), 1) == date(2027, 1, 15)
    assert add_months(date(2026, 1, 31), -2) == date(2025, 11, 30)
    assert add_months(date(2024, 3, 31), -1) == date(2024, 2, 29)
    assert add_months(date(2026, 5, 5), 0) == date(2026, 5, 5)


def test_window_sum_counts_first_day_and_excludes_the_end() -> None:
    buckets = [(date(2026, 1, 1), 5), (date(2026, 1, 2), 7), (date(2026, 1, 3), 11)]
    assert window_sum(buckets, None) == 23
    assert window_sum(buckets, date(2026, 1, 2)) == 18
    assert window_sum(buckets, date(2026, 1, 1), date(2026, 1, 3)) == 12
    assert window_sum(buckets, None, date(2026, 1, 2)) == 5
    assert window_sum([], None) == 0


@pytest.mark.parametrize(
    ("entry", "points", "counted"),
    [
        ("redeem", -30, 0),
        ("redeem", 30, 30),
        ("expire", -5, 0),
        ("adjust", -5, -5),
        ("reverse", -9, -9),
        ("earn", 4, 4),
    ],
)
def test_counted_points(entry: str, points: int, counted: int) -> None:
    assert counted_points(entry, points) == counted


def test_zone_violation_names_the_fix() -> None:
    assert zone_violation("Europe/Paris") is None
    assert zone_violation("Mars/Olympus") == "must be an IANA time zone, e.g. Europe/Paris"
    assert zone_violation("../etc/passwd") == "must be an IANA time zone, e.g. Europe/Paris"


def test_every_bad_programme_field_is_named_with_its_rule() -> None:
    bad = Programme(
        window="weekly",  # type: ignore[arg-type]
        time_zone="Nowhere/Else",
        window_months=3,
        downgrade_policy="sometimes",  # type: ignore[arg-type]
        grace_days=366,
        entry_bonus="always",  # type: ignore[arg-type]
        downgrade_warning_days=-1,
    )
    assert bad.violations() == [
        FieldViolation("program.window", "must be one of lifetime, calendar_year, rolling_months"),
        FieldViolation("program.window_months", "only for a rolling_months window"),
        FieldViolation("program.time_zone", "must be an IANA time zone, e.g. Europe/Paris"),
        FieldViolation("program.downgrade_policy", "must be one of never, to_qualified, one_down"),
        FieldViolation("program.grace_days", "must be 0..365"),
        FieldViolation("program.entry_bonus", "must be one of once_ever, every_promotion"),
        FieldViolation("program.downgrade_warning_days", "must be 0..365"),
    ]
    with pytest.raises(InvalidArgument):
        bad.validated()


@pytest.mark.parametrize(("months", "ok"), [(None, False), (0, False), (1, True), (36, True), (37, False)])
def test_rolling_window_months_range(months: int | None, ok: bool) -> None:
    p = Programme(window="rolling_months", window_months=months)
    want = [] if ok else [FieldViolation("program.window_months", "must be 1..36")]
    assert p.violations() == want


@pytest.mark.parametrize("days", [0, 365])
def test_day_counts_at_their_bounds_are_accepted(days: int) -> None:
    p = Programme(grace_days=days, downgrade_warning_days=days)
    assert p.violations() == []
    assert p.validated() is p
    assert Programme(grace_days=-1).violations() == [FieldViolation("program.grace_days", "must be 0..365")]
    assert Programme(downgrade_warning_days=366).violations() == [
        FieldViolation("program.downgrade_warning_days", "must be 0..365")
    ]
