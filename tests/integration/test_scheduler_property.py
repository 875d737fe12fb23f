"""The SQL path against a reference, as a hypothesis property on the real database: for any
sequence of ledger entries and clock moves (each move followed by scheduler passes until nothing
is due), the tier the scheduler's set-based statement leaves equals a straightforward reference
evaluation of the rules written here (calendar year in UTC, ladder 0 / 1,000 / 5,000, the
to_qualified or one_down policy, with or without grace days). Bounded: 150 examples of at most 10
steps (~10 s here; well under a minute)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.integration.test_deadline_scheduler import scheduler
from tests.integration.test_points_recorded import Clock, entry, handler, tier_of

TIERS = ["basic", "silver", "gold"]
THRESHOLDS = [0, 1000, 5000]
START = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("earn"), st.one_of(st.sampled_from([1200, 5200]), st.integers(0, 6000))),
        st.tuples(st.just("adjust"), st.integers(-3000, 0)),
        st.tuples(st.just("wait"), st.one_of(st.sampled_from([360, 400]), st.integers(1, 800))),
    ),
    min_size=1,
    max_size=10,
)


@dataclass
class Reference:
    """The rules, written out: points count in their calendar year; an entry lifts the customer to
    the highest tier the year's points reach (never lower), held until 1 January after; at 1 January
    + grace the points of the year that ended decide: to_qualified goes to the tier they reach,
    one_down at most one tier down; either way the tier is then held one more year."""

    policy: str
    grace_days: int
    rank: int | None = None
    period_end_year: int = 0  # the period ends on 1 January of this year
    points: dict[int, int] = field(default_factory=dict)

    @staticmethod
    def reached(points: int) -> int:
        return max(i for i, t in enumerate(THRESHOLDS) if t <= max(points, 0))

    def on_entry(self, now: datetime, qualifying: int) -> None:
        self.points[now.year] = self.points.get(now.year, 0) + qualifying
        reached = self.reached(self.points[now.year])
        if self.rank is None or reached > self.rank:
            self.rank, self.period_end_year = reached, now.year + 1

    def pass_at(self, now: datetime) -> bool:
        """One deadline: re-assesses the customer once if due; whether it was."""
        if self.rank is None:
            return False
        deadline = datetime(self.period_end_year, 1, 1, tzinfo=UTC) + timedelta(days=self.grace_days)
        if deadline > now:
            return False
        reached = self.reached(self.points.get(self.period_end_year - 1, 0))
        if reached > self.rank:
            self.rank = reached
        else:
            target = reached if self.policy == "to_qualified" else max(reached, self.rank - 1)
            self.rank = min(self.rank, max(target, 0))
        self.period_end_year += 1
        return True


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(policy="one_down", grace=0, plan=[("earn", 5200), ("wait", 800)])
@example(policy="to_qualified", grace=10, plan=[("earn", 5200), ("wait", 400), ("earn", 1200), ("wait", 365)])
@given(policy=st.sampled_from(["to_qualified", "one_down"]), grace=st.sampled_from([0, 10]), plan=steps)
async def test_the_tier_the_scheduler_leaves_equals_the_reference(
    app_pool: Any, ladder_merchant: Any, superuser_conn: Any, policy: str, grace: int, plan: list[tuple[str, int]]
) -> None:
    merchant = await ladder_merchant(window_kind="calendar_year", downgrade_policy=policy, grace_days=grace)
    customer = uuid.uuid4()
    reference = Reference(policy, grace)
    now = START
    for kind, amount in plan:
        if kind == "wait":
            now += timedelta(days=amount)
            s = scheduler(app_pool, chunk_size=3)
            while (await s.run_once(now)).reassessed:  # (the database's other customers too)
                pass
            while reference.pass_at(now):  # a long wait passes several deadlines
                pass
        else:
            await handler(app_pool, Clock(now)).batch([entry(merchant, customer, amount, kind=kind, at=now)])
            reference.on_entry(now, amount)
        expected = None if reference.rank is None else TIERS[reference.rank]
        assert await tier_of(superuser_conn, merchant, customer) == expected, (policy, grace, plan, now)
