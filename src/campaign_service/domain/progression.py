"""Tier progression rules: windows, thresholds, upgrades on earning, downgrades at deadlines. No I/O.

The model (what the code below decides, in one place):
  * Qualifying points count on the LOCAL day (programme time zone) of the entry's `occurred_at`.
  * A window is a range of local days. `lifetime`: all days. `calendar_year`: the local year.
    `rolling_months` N: the N months up to and including today.
  * Earning (any entry) upgrades at once to the highest tier whose `min_points` the current
    window sum reaches (tiers may be skipped) and never downgrades. The tier is then held for a
    period: `calendar_year` until the next local 1 January; `rolling_months` N until N months
    after the local day it was reached; `lifetime` for ever.
  * At the deadline (end of period + `grace_days`) the customer is re-assessed on the points of
    the period that ended, by the downgrade policy: `never` keeps the tier, `to_qualified` moves
    to the tier those points reach, `one_down` moves at most one tier down. A kept or new tier is
    then held for the next period (so points earned in a year keep the tier through the next).
  * A reversal lowers the window sum; with `reversal_downgrades_now` it moves the customer to the
    tier the window still reaches at once (whatever the downgrade policy: it undoes what the
    reversed entry caused), else only the next deadline can lower the tier.
  * Nothing moves below a manual floor while the floor lasts. When no tier is reached, the lowest
    tier is the floor of the ladder (a customer who holds a tier keeps holding one).
  * Entry bonus: the tier's `bonus_points` on an upward move (or a first tier reached by
    threshold), `once_ever` only the first time the customer enters that tier.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from campaign_service.domain.errors import FieldViolation, InvalidArgument

WindowKind = Literal["lifetime", "calendar_year", "rolling_months"]
DowngradePolicy = Literal["never", "to_qualified", "one_down"]
EntryBonus = Literal["once_ever", "every_promotion"]
Direction = Literal["initial", "up", "down", "manual"]
Reason = Literal["default", "threshold_reached", "period_end", "grace_expired", "reversal", "manual", "program_change"]

WINDOW_KINDS: tuple[str, ...] = ("lifetime", "calendar_year", "rolling_months")
DOWNGRADE_POLICIES: tuple[str, ...] = ("never", "to_qualified", "one_down")
ENTRY_BONUSES: tuple[str, ...] = ("once_ever", "every_promotion")
MAX_WINDOW_MONTHS = 36
MAX_GRACE_DAYS = 365


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def zone_violation(name: str) -> str | None:
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "must be an IANA time zone, e.g. Europe/Paris"
    return None


@dataclass(frozen=True)
class Programme:
    """A merchant's qualification rules. The defaults are the behaviour before progression existed."""

    window: WindowKind = "lifetime"
    time_zone: str = "UTC"
    window_months: int | None = None
    downgrade_policy: DowngradePolicy = "never"
    grace_days: int = 0
    reversal_downgrades_now: bool = False
    entry_bonus: EntryBonus = "once_ever"
    downgrade_warning_days: int = 0
    version: int = 0  # 0: no programme row (defaults)

    def violations(self) -> list[FieldViolation]:
        out = []
        if self.window not in WINDOW_KINDS:
            out.append(FieldViolation("program.window", f"must be one of {', '.join(WINDOW_KINDS)}"))
        if self.window == "rolling_months":
            if self.window_months is None or not 1 <= self.window_months <= MAX_WINDOW_MONTHS:
                out.append(FieldViolation("program.window_months", f"must be 1..{MAX_WINDOW_MONTHS}"))
        elif self.window_months is not None:
            out.append(FieldViolation("program.window_months", "only for a rolling_months window"))
        problem = zone_violation(self.time_zone)
        if problem:
            out.append(FieldViolation("program.time_zone", problem))
        if self.downgrade_policy not in DOWNGRADE_POLICIES:
            out.append(FieldViolation("program.downgrade_policy", f"must be one of {', '.join(DOWNGRADE_POLICIES)}"))
        if not 0 <= self.grace_days <= MAX_GRACE_DAYS:
            out.append(FieldViolation("program.grace_days", f"must be 0..{MAX_GRACE_DAYS}"))
        if self.entry_bonus not in ENTRY_BONUSES:
            out.append(FieldViolation("program.entry_bonus", f"must be one of {', '.join(ENTRY_BONUSES)}"))
        if not 0 <= self.downgrade_warning_days <= MAX_GRACE_DAYS:
            out.append(FieldViolation("program.downgrade_warning_days", f"must be 0..{MAX_GRACE_DAYS}"))
        return out

    def validated(self) -> Programme:
        problems = self.violations()
        if problems:
            raise InvalidArgument(problems)
        return self

    @property
    def has_deadlines(self) -> bool:
        """Whether customers are ever re-assessed: not for a lifetime window or a `never` policy."""
        return self.window != "lifetime" and self.downgrade_policy != "never"

    # -- windows ---------------------------------------------------------------------------

    def local_day(self, instant: datetime) -> date:
        return instant.astimezone(zone(self.time_zone)).date()

    def _months(self) -> int:
        return 12 if self.window == "calendar_year" else self.window_months or 1

    def window_start(self, instant: datetime) -> date | None:
        """The first local day counted in the window that contains `instant` (None: all days)."""
        day = self.local_day(instant)
        if self.window == "calendar_year":
            return date(day.year, 1, 1)
        if self.window == "rolling_months":
            return add_months(day, -self._months()) + timedelta(days=1)
        return None

    def period_end(self, instant: datetime) -> datetime | None:
        """The end of the period a tier reached at `instant` is held for (None: for ever)."""
        day = self.local_day(instant)
        if self.window == "calendar_year":
            return self._midnight(date(day.year + 1, 1, 1))
        if self.window == "rolling_months":
            return self._midnight(add_months(day, self._months()))
        return None

    def next_period_end(self, period_end: datetime) -> datetime:
        return self._midnight(add_months(self.local_day(period_end), self._months()))

    def assessment_window(self, period_end: datetime) -> tuple[date, date]:
        """The local days [first, end) whose points decide the tier at the end of a period."""
        end = self.local_day(period_end)
        return add_months(end, -self._months()), end

    def deadline(self, period_end: datetime | None) -> datetime | None:
        if period_end is None or not self.has_deadlines:
            return None
        return period_end + timedelta(days=self.grace_days)

    def _midnight(self, day: date) -> datetime:
        return datetime.combine(day, time(), zone(self.time_zone)).astimezone(UTC)


def add_months(day: date, months: int) -> date:
    """`day` moved by whole months, clamped to the month's last day (31 Jan + 1 month = 28/29 Feb)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


@dataclass(frozen=True)
class Level:
    """A tier as progression sees it."""

    tier_id: str
    min_points: int
    bonus_points: int = 0
    is_default: bool = False


class Ladder:
    """A merchant's tiers from lowest to highest (by min_points, then tier_id, as EvaluateTier)."""

    def __init__(self, levels: Iterable[Level]) -> None:
        self.levels: list[Level] = sorted(levels, key=lambda lv: (lv.min_points, lv.tier_id))
        self._rank = {lv.tier_id: i for i, lv in enumerate(self.levels)}

    def __bool__(self) -> bool:
        return bool(self.levels)

    def rank(self, tier_id: str | None) -> int:
        """Position in the ladder; -1 for none or a tier that is not on it."""
        return self._rank.get(tier_id, -1) if tier_id is not None else -1

    def get(self, tier_id: str) -> Level | None:
        i = self._rank.get(tier_id)
        return self.levels[i] if i is not None else None

    def qualified(self, points: int) -> Level | None:
        """The highest tier whose threshold `points` reach."""
        best = None
        for lv in self.levels:
            if lv.min_points <= points:
                best = lv
        return best

    @property
    def default(self) -> Level | None:
        return next((lv for lv in self.levels if lv.is_default), None)

    @property
    def lowest(self) -> Level | None:
        return self.levels[0] if self.levels else None


@dataclass(frozen=True)
class TierState:
    """What is stored about a customer's tier."""

    tier_id: str
    since: datetime
    qualifying_points: int = 0
    period_end: datetime | None = None
    deadline: datetime | None = None
    floor_tier_id: str | None = None
    floor_until: datetime | None = None
    held_tiers: frozenset[str] = field(default_factory=frozenset)
    program_version: int = 0

    def floor_rank(self, ladder: Ladder, now: datetime) -> int:
        if self.floor_tier_id is None or (self.floor_until is not None and self.floor_until <= now):
            return -1
        return ladder.rank(self.floor_tier_id)


@dataclass(frozen=True)
class Move:
    """A change of tier, with what the history row and the event say about it."""

    previous_tier_id: str | None
    tier_id: str
    direction: Direction
    reason: Reason
    bonus_points: int


@dataclass(frozen=True)
class Evaluation:
    """The state after an evaluation, and the move it made (None: the tier did not change)."""

    state: TierState | None
    move: Move | None


def _bonus(programme: Programme, level: Level, held: frozenset[str]) -> int:
    if programme.entry_bonus == "once_ever" and level.tier_id in held:
        return 0
    return level.bonus_points


def _moved(
    programme: Programme,
    state: TierState | None,
    level: Level,
    direction: Direction,
    reason: Reason,
    now: datetime,
    *,
    period_end: datetime | None,
    points: int,
) -> Evaluation:
    held = state.held_tiers if state else frozenset()
    bonus = _bonus(programme, level, held) if direction == "up" or reason == "threshold_reached" else 0
    base = state or TierState(tier_id=level.tier_id, since=now)
    new = replace(
        base,
        tier_id=level.tier_id,
        since=now,
        qualifying_points=points,
        period_end=period_end,
        deadline=programme.deadline(period_end),
        held_tiers=held | {level.tier_id},
        program_version=programme.version,
    )
    return Evaluation(new, Move(state.tier_id if state else None, level.tier_id, direction, reason, bonus))


def on_entry(
    programme: Programme,
    ladder: Ladder,
    state: TierState | None,
    window_points: int,
    now: datetime,
    *,
    reversal: bool = False,
) -> Evaluation:
    """After a ledger entry: the window now sums `window_points`. Upgrades at once; downgrades
    only for a reversal when the programme says so. A customer without a tier gets the tier the
    points reach, else the default tier, else stays without one."""
    points = max(window_points, 0)
    reached = ladder.qualified(points)
    if state is None:
        default = ladder.default
        reason: Reason
        if reached is not None and (default is None or ladder.rank(reached.tier_id) > ladder.rank(default.tier_id)):
            first, reason = reached, "threshold_reached"
        elif default is not None:
            first, reason = default, "default"
        else:
            return Evaluation(None, None)
        return _moved(
            programme, None, first, "initial", reason, now, period_end=programme.period_end(now), points=window_points
        )
    current = ladder.rank(state.tier_id)
    if reached is not None and ladder.rank(reached.tier_id) > current:
        return _moved(
            programme, state, reached, "up", "threshold_reached", now,
            period_end=programme.period_end(now), points=window_points,
        )  # fmt: skip
    if reversal and programme.reversal_downgrades_now:
        target = _down_target(ladder, state, reached, current, now, one_down=False)
        if target is not None:
            return _moved(
                programme, state, target, "down", "reversal", now,
                period_end=state.period_end, points=window_points,
            )  # fmt: skip
    return Evaluation(replace(state, qualifying_points=window_points), None)


def _down_target(
    ladder: Ladder, state: TierState, reached: Level | None, current: int, now: datetime, *, one_down: bool
) -> Level | None:
    """The lower tier to move to, or None to stay."""
    target = ladder.rank(reached.tier_id) if reached is not None else 0
    if one_down:
        target = max(target, current - 1)
    target = max(target, state.floor_rank(ladder, now), 0)
    if current < 0 or target >= current or not ladder.levels:
        return None
    return ladder.levels[target]


def at_deadline(
    programme: Programme, ladder: Ladder, state: TierState, period_points: int, now: datetime
) -> Evaluation:
    """The customer's deadline has passed: `period_points` is the sum of the period that ended
    (programme.assessment_window(state.period_end)). Applies the downgrade policy; the tier kept
    or reached is held for the next period."""
    if state.period_end is None or not programme.has_deadlines:
        return Evaluation(replace(state, deadline=None), None)  # nothing to re-assess any more
    next_end = programme.next_period_end(state.period_end)
    points = max(period_points, 0)
    reached = ladder.qualified(points)
    current = ladder.rank(state.tier_id)
    if reached is not None and ladder.rank(reached.tier_id) > current:  # late entries of the period
        return _moved(
            programme, state, reached, "up", "threshold_reached", now, period_end=next_end, points=period_points
        )
    if programme.downgrade_policy != "never":
        target = _down_target(ladder, state, reached, current, now, one_down=programme.downgrade_policy == "one_down")
        if target is not None:
            reason: Reason = "grace_expired" if programme.grace_days else "period_end"
            return _moved(programme, state, target, "down", reason, now, period_end=next_end, points=period_points)
    return Evaluation(
        replace(
            state,
            qualifying_points=period_points,
            period_end=next_end,
            deadline=programme.deadline(next_end),
            program_version=programme.version,
        ),
        None,
    )


def window_sum(buckets: Sequence[tuple[date, int]], first: date | None, end: date | None = None) -> int:
    """The points of the days in [first, end) (None: unbounded)."""
    return sum(p for day, p in buckets if (first is None or day >= first) and (end is None or day < end))


EntryType = Literal["earn", "redeem", "expire", "adjust", "reverse"]
ENTRY_TYPES: tuple[str, ...] = ("earn", "redeem", "expire", "adjust", "reverse")


def counted_points(entry_type: str, qualifying_points: int) -> int:
    """What an entry adds to tier progress: redeeming and expiring spend points but never lower
    progress (a negative amount counts 0); earn, adjust and reverse count as given."""
    if entry_type in ("redeem", "expire"):
        return max(qualifying_points, 0)
    return qualifying_points
