"""Use cases of tier progression behind the API: the merchant's programme (read, update), a
customer's tier status and history, and a hand-made tier assignment.

The status is computed with domain/progression.py, the rules the consumer and the scheduler
apply (`at_deadline` answers "the tier if the deadline were now"): no second implementation.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from uuid import UUID

import structlog

from campaign_service import context, metrics
from campaign_service.domain import events
from campaign_service.domain.errors import FieldViolation, InvalidArgument, NotFound, VersionConflict, invalid
from campaign_service.domain.progression import Ladder, Level, Programme, TierState, at_deadline
from campaign_service.domain.tier_changes import apply_mode
from campaign_service.domain.tiers import VIPTier, check_tier_id
from campaign_service.service.progression import millis
from campaign_service.service.progression_api_ports import (
    HistoryRow,
    ManualAssignment,
    ProgressionApiStore,
    ProgressionApiTransaction,
    StoredProgramme,
)

log = structlog.get_logger(__name__)

# Programme field paths (as in the proto's TierProgram) -> the Programme attribute.
PROGRAM_FIELDS: dict[str, str] = {
    "window": "window",
    "rolling_months": "window_months",
    "time_zone": "time_zone",
    "downgrade_policy": "downgrade_policy",
    "grace_days": "grace_days",
    "reversal_downgrades_now": "reversal_downgrades_now",
    "entry_bonus": "entry_bonus",
    "downgrade_warning_days": "downgrade_warning_days",
}
# The `vip_tier.updated` event of a programme change: a tier id no tier can have (tier ids start
# with a letter or digit), so audit consumers see it on the topic they already read.
PROGRAM_EVENT_TIER_ID = "_program"
# Fields whose change re-times every customer's period (a grace change only moves the deadlines).
_PERIOD_FIELDS = frozenset({"window", "rolling_months", "time_zone", "downgrade_policy"})
# Programme fields whose change can move customers: a re-assessment job follows (made now or
# scheduled).
QUALIFYING_PROGRAM_FIELDS = _PERIOD_FIELDS | {"grace_days"}
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
_REASON = re.compile(r"[a-z0-9_.-]{1,64}")


def program_mask(paths: list[str]) -> list[str]:
    if not paths:
        raise invalid("update_mask", "must name at least one field (or `*`)")
    if "*" in paths:
        if len(paths) > 1:
            raise invalid("update_mask", "`*` must be the only path")
        return list(PROGRAM_FIELDS)
    unknown = [p for p in paths if p not in PROGRAM_FIELDS]
    if unknown:
        raise invalid("update_mask", f"unknown path(s): {', '.join(sorted(unknown))}")
    return list(dict.fromkeys(paths))


def _renamed(problems: list[FieldViolation]) -> InvalidArgument:
    """The domain names the months `program.window_months`; the API calls them `rolling_months`."""
    return InvalidArgument(
        [
            FieldViolation("program.rolling_months", v.description) if v.field == "program.window_months" else v
            for v in problems
        ]
    )


def patched_programme(current: Programme, values: Programme, paths: list[str]) -> Programme:
    """`current` with the masked fields of `values`; a window that stops being rolling drops its months."""
    new = replace(current, **{PROGRAM_FIELDS[p]: getattr(values, PROGRAM_FIELDS[p]) for p in paths})
    if "rolling_months" not in paths and new.window != "rolling_months":
        new = replace(new, window_months=None)
    problems = new.violations()
    if problems:
        raise _renamed(problems)
    return new


def changed_paths(old: Programme, new: Programme) -> list[str]:
    return [p for p, attr in PROGRAM_FIELDS.items() if getattr(old, attr) != getattr(new, attr)]


@dataclass(frozen=True)
class ProgrammeUpdate:
    stored: StoredProgramme
    changed: list[str]  # the paths that changed (empty: nothing changed, no event)
    job_id: UUID | None = None  # the re-assessment job the change started, if any


@dataclass(frozen=True)
class TierStatus:
    tier: VIPTier
    since: datetime
    window_points: int
    next_tier: VIPTier | None
    points_to_next_tier: int
    deadline: datetime | None
    points_to_keep_tier: int
    tier_if_deadline_now: VIPTier
    floor_tier_id: str | None
    floor_until: datetime | None


@dataclass(frozen=True)
class HistoryPage:
    entries: list[HistoryRow]
    next_page_token: str


@dataclass(frozen=True)
class AssignResult:
    changed: bool
    previous_tier_id: str | None
    tier_id: str


def ladder_of(tiers: list[VIPTier]) -> Ladder:
    return Ladder(Level(t.tier_id, t.spec.min_points, t.spec.benefits.bonus_points, t.spec.is_default) for t in tiers)


def encode_page_token(merchant_id: UUID, customer_id: UUID, before_id: int) -> str:
    raw = json.dumps({"m": str(merchant_id), "c": str(customer_id), "b": before_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, merchant_id: UUID, customer_id: UUID) -> int | None:
    """The id to page before; None for the first page. A token of another merchant or customer,
    or one that is not ours, is INVALID_ARGUMENT."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        m, c, before = UUID(data["m"]), UUID(data["c"]), data["b"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise invalid("page_token", "not a page token of this RPC") from None
    if m != merchant_id or c != customer_id or not isinstance(before, int) or isinstance(before, bool):
        raise invalid("page_token", "belongs to another merchant or customer")
    return before


class ProgressionApi:
    def __init__(self, store: ProgressionApiStore) -> None:
        self._store = store

    # -- programme ----------------------------------------------------------------------------

    async def get_programme(self, merchant_id: UUID) -> StoredProgramme:
        async with self._store(merchant_id, readonly=True) as tx:
            return await tx.programme()

    async def update_programme(
        self,
        merchant_id: UUID,
        values: Programme,
        mask: list[str],
        expected_version: int = 0,
        now: datetime | None = None,
        mode: str = "",
    ) -> ProgrammeUpdate:
        """A change of a field that decides who qualifies (QUALIFYING_PROGRAM_FIELDS) is applied
        to the customers by a re-assessment job (issue 14) in the apply mode `mode` (empty: the
        default), queued in the change's transaction; its id is in the result."""
        paths = program_mask(mask)
        checked = apply_mode(mode)
        if expected_version < 0:
            raise invalid("expected_version", "must be >= 0 (0: any version)")
        async with self._store(merchant_id) as tx:
            current = await tx.programme(for_update=True)
            if expected_version and current.programme.version != expected_version:
                raise VersionConflict(
                    f"the programme is at version {current.programme.version}, not {expected_version}"
                )
            new = patched_programme(current.programme, values, paths)
            changed = changed_paths(current.programme, new)
            if not changed:
                return ProgrammeUpdate(current, [])
            saved = await tx.save_programme(new)
            rescheduled = await _reschedule(tx, current.programme, saved.programme, changed, now or datetime.now(UTC))
            job_id = await tx.enqueue_reassessment(checked) if QUALIFYING_PROGRAM_FIELDS & set(changed) else None
            await tx.add_outbox(
                [
                    events.tier_updated(
                        event_id=uuid.uuid4(),
                        merchant_id=merchant_id,
                        tier_id=PROGRAM_EVENT_TIER_ID,
                        updated_fields=[f"program.{p}" for p in changed],
                        updated_at=saved.updated_at or datetime.now(UTC),
                        actor=context.actor.get(),
                        correlation_id=context.current_correlation_id(),
                        traceparent=context.current_traceparent(),
                    )
                ]
            )
        log.info(
            "tier programme changed",
            fields=changed,
            version=saved.programme.version,
            rescheduled=rescheduled,
            job_id=str(job_id) if job_id else None,
        )
        return ProgrammeUpdate(saved, changed, job_id)

    # -- customer status ------------------------------------------------------------------------

    async def status(self, merchant_id: UUID, customer_id: UUID, now: datetime | None = None) -> TierStatus:
        now = now or datetime.now(UTC)
        async with self._store(merchant_id, readonly=True) as tx:
            state = await tx.state(customer_id)
            if state is None:
                raise NotFound("customer has no tier")
            programme = (await tx.programme()).programme
            tiers = await tx.tiers()
            window_points = await tx.points(customer_id, programme.window_start(now), None)
            period_points = await _period_points(tx, customer_id, programme, state)
        return _status(programme, tiers, state, window_points, period_points, now)

    async def history(self, merchant_id: UUID, customer_id: UUID, page_size: int, page_token: str) -> HistoryPage:
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise invalid("page_size", f"must be 0..{MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})")
        size = page_size or DEFAULT_PAGE_SIZE
        before = decode_page_token(page_token, merchant_id, customer_id)
        async with self._store(merchant_id, readonly=True) as tx:
            rows = await tx.history(customer_id, before, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        token = encode_page_token(merchant_id, customer_id, rows[-1].id) if more else ""
        return HistoryPage(rows, token)

    # -- manual assignment ----------------------------------------------------------------------

    async def assign(
        self,
        merchant_id: UUID,
        customer_id: UUID,
        tier_id: str,
        reason: str,
        *,
        as_floor: bool = False,
        floor_until: datetime | None = None,
        now: datetime | None = None,
    ) -> AssignResult:
        check_tier_id(tier_id)
        if not _REASON.fullmatch(reason):
            raise invalid("reason", "must be a code of 1-64 characters a-z, 0-9, _ . - (no free text)")
        now = millis(now or datetime.now(UTC))
        if floor_until is not None:
            if not as_floor:
                raise invalid("floor_until", "only with as_floor")
            if floor_until <= now:
                raise invalid("floor_until", "must be in the future")
        actor = context.actor.get()
        async with self._store(merchant_id) as tx:
            tiers = await tx.tiers()
            ladder = ladder_of(tiers)
            level = ladder.get(tier_id)
            if level is None:
                raise NotFound(f"tier {tier_id!r} not found")
            programme = (await tx.programme()).programme
            state = await tx.state(customer_id, for_update=True)
            floor = (tier_id, millis(floor_until) if floor_until else None) if as_floor else (None, None)
            if state is not None and state.tier_id == tier_id:
                new = replace(state, floor_tier_id=floor[0], floor_until=floor[1])
                moved = False
            else:
                period_end = programme.period_end(now)
                points = await tx.points(customer_id, programme.window_start(now), None)
                base = state or TierState(tier_id=tier_id, since=now)
                new = replace(
                    base,
                    tier_id=tier_id,
                    since=now,
                    qualifying_points=points,
                    period_end=period_end,
                    deadline=programme.deadline(period_end),
                    floor_tier_id=floor[0],
                    floor_until=floor[1],
                    held_tiers=base.held_tiers | {tier_id},
                    program_version=programme.version,
                )
                moved = True
            await tx.assign(ManualAssignment(customer_id, new, moved, reason, actor))
            previous = state.tier_id if state else None
            if moved:
                await tx.add_outbox(
                    [
                        events.tier_assigned(
                            event_id=uuid.uuid4(),
                            merchant_id=merchant_id,
                            customer_id=customer_id,
                            tier_id=tier_id,
                            assigned_at=now,
                            correlation_id=context.current_correlation_id(),
                            cause_event_id=None,
                            traceparent=context.current_traceparent(),
                            previous_tier_id=previous,
                            direction="manual",
                            reason="manual",
                            bonus_points=0,
                            program_version=programme.version,
                        )
                    ]
                )
        if moved:
            metrics.TIER_MOVES.labels("manual", "manual").inc()
        return AssignResult(moved, previous, tier_id)




async def _reschedule(
    tx: ProgressionApiTransaction, old: Programme, new: Programme, changed: list[str], now: datetime
) -> int:
    """Customers' deadlines under a changed programme. A change of window, time zone or policy
    starts a fresh period for everyone at the change (held under the new rules for a whole
    period: nobody is downgraded by surprise, and a lifetime/never programme that gets deadlines
    reaches every existing customer); a grace change keeps the periods and moves the deadlines.
    Tiers do not move here (no history, no event): the next evaluation applies the new rules."""
    if _PERIOD_FIELDS & set(changed):
        period_end = new.period_end(now) if new.has_deadlines else None
        return await tx.reschedule(period_end, new.deadline(period_end), new.version)
    if "grace_days" in changed and new.has_deadlines:
        return await tx.regrace(new.grace_days, new.version)
    return 0


async def _period_points(
    tx: ProgressionApiTransaction, customer_id: UUID, programme: Programme, state: TierState
) -> int | None:
    """The points of the period assessed at the customer's deadline (None: no deadline)."""
    if state.period_end is None or not programme.has_deadlines:
        return None
    first, end = programme.assessment_window(state.period_end)
    return await tx.points(customer_id, first, end)


def _status(
    programme: Programme,
    tiers: list[VIPTier],
    state: TierState,
    window_points: int,
    period_points: int | None,
    now: datetime,
) -> TierStatus:
    by_id = {t.tier_id: t for t in tiers}
    ladder = ladder_of(tiers)
    current = by_id.get(state.tier_id)
    if current is None:  # the tier was deleted under the customer (not possible while held)
        raise NotFound("customer has no tier")
    rank = ladder.rank(state.tier_id)
    above = ladder.levels[rank + 1] if 0 <= rank < len(ladder.levels) - 1 else None
    next_tier = by_id[above.tier_id] if above else None
    deadline = state.deadline if programme.has_deadlines else None
    if period_points is None:
        keep, if_now = 0, current
    else:
        evaluation = at_deadline(programme, ladder, state, period_points, now)
        if_now = by_id[evaluation.state.tier_id] if evaluation.state else current
        keep = 0 if ladder.rank(if_now.tier_id) >= rank else max(current.spec.min_points - max(period_points, 0), 0)
    return TierStatus(
        tier=current,
        since=state.since,
        window_points=window_points,
        next_tier=next_tier,
        points_to_next_tier=max(above.min_points - max(window_points, 0), 0) if above else 0,
        deadline=deadline,
        points_to_keep_tier=keep,
        tier_if_deadline_now=if_now,
        floor_tier_id=state.floor_tier_id if state.floor_rank(ladder, now) >= 0 else None,
        floor_until=state.floor_until if state.floor_rank(ladder, now) >= 0 else None,
    )
