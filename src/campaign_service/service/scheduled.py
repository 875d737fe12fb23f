"""Scheduled (effective-dated) configuration changes: schedule a tier or programme edit for a
time, list and cancel pending ones, read the configuration as of a time, and activate what is due.

Reads never wait for the activator: a read at or after a change's `effective_at` applies the
pending change to what is stored (domain.scheduled.apply_tier_edit, the function the activation
itself uses), so the answer flips at the effective time on every instance whose clock says so,
however late the activator runs. The activator then makes it the stored configuration, in one
transaction with its `vip_tier.updated` events, the configuration version it makes, and the
re-assessment job it queues; it blocks the read cache's keys before its commit like every write.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import structlog

from campaign_service import context
from campaign_service.domain import events
from campaign_service.domain.errors import CampaignError, FailedPrecondition, NotFound, invalid
from campaign_service.domain.progression import Programme
from campaign_service.domain.scheduled import (
    PROGRAM_TARGET,
    QUALIFYING_TIER_FIELDS,
    TierEdit,
    apply_tier_edit,
    changed_tier_ids,
)
from campaign_service.domain.tier_changes import ApplyMode, apply_mode, optional_apply_mode
from campaign_service.domain.tiers import MUTABLE_FIELDS, TierSpec, VIPTier, check_mask, check_tier_id
from campaign_service.service.errors import Unavailable
from campaign_service.service.ports import AfterCommit, TierChangeListener
from campaign_service.service.progression import millis
from campaign_service.service.progression_api import (
    PROGRAM_EVENT_TIER_ID,
    QUALIFYING_PROGRAM_FIELDS,
    _reschedule,
    changed_paths,
    patched_programme,
    program_mask,
)
from campaign_service.service.progression_api_ports import StoredProgramme
from campaign_service.service.scheduled_ports import (
    NotKept,
    PastConfiguration,
    ScheduledChange,
    ScheduledStore,
    ScheduledTransaction,
)

log = structlog.get_logger(__name__)

MAX_AHEAD = timedelta(days=5 * 366)
MAX_LIST = 200


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TierView:
    """The merchant's tiers as of a time, and until when that answer holds (the next pending
    tier change's effective time; None: no pending change)."""

    tiers: list[VIPTier]
    valid_until: datetime | None


def _replayed(
    tiers: Sequence[VIPTier],
    merchant_id: UUID,
    changes: Sequence[ScheduledChange],
    at: datetime,
    enabled: tuple[str, ...],
) -> tuple[list[VIPTier], dict[UUID, CampaignError]]:
    """`tiers` after the pending tier changes due at `at`, in time order; a change that does not
    fit (with the merchant's `enabled` locales) is skipped (its activation fails the same way)
    and reported."""
    current = list(tiers)
    failed: dict[UUID, CampaignError] = {}
    for change in changes:
        if change.tier is None or change.effective_at > at:
            continue
        try:
            current = apply_tier_edit(current, merchant_id, change.tier, change.effective_at, enabled=enabled)
        except CampaignError as exc:
            failed[change.change_id] = exc
    return current, failed


def _replays(changes: Sequence[ScheduledChange], at: datetime) -> bool:
    """Whether a read at `at` applies a pending tier change (and so needs the merchant's locales)."""
    return any(c.tier is not None and c.effective_at <= at for c in changes)


def _next_tier_change(changes: Sequence[ScheduledChange], at: datetime) -> datetime | None:
    return min((c.effective_at for c in changes if c.tier is not None and c.effective_at > at), default=None)


class ScheduledChanges:
    def __init__(
        self,
        store: ScheduledStore,
        listeners: Sequence[TierChangeListener] = (),
        *,
        clock: Callable[[], datetime] = system_clock,
    ) -> None:
        self._store = store
        self._listeners = list(listeners)
        self._clock = clock
        self.scheduled = asyncio.Event()  # set when this instance schedules a change (wakes the activator)

    def now(self) -> datetime:
        return self._clock()

    # -- scheduling ---------------------------------------------------------------------------

    def _check_time(self, effective_at: datetime) -> datetime:
        now = self._clock()
        if effective_at.tzinfo is None:
            raise invalid("effective_at", "must carry a time zone")
        effective_at = millis(effective_at)
        if effective_at <= now:
            raise invalid("effective_at", "must be in the future (leave it unset to change now)")
        if effective_at > now + MAX_AHEAD:
            raise invalid("effective_at", "must be within 5 years")
        return effective_at

    async def schedule_create(
        self, merchant_id: UUID, tier_id: str, spec: TierSpec, effective_at: datetime, mode: str = ""
    ) -> ScheduledChange:
        """`mode`: how customers are re-assessed at its time (empty: the default)."""
        check_tier_id(tier_id, "tier.tier_id")
        edit = TierEdit("tier_create", tier_id, spec, frozenset(MUTABLE_FIELDS), uuid.uuid4())
        return await self._schedule_tier(merchant_id, edit, effective_at, apply_mode(mode))

    async def schedule_update(
        self,
        merchant_id: UUID,
        tier_id: str,
        values: TierSpec,
        mask: list[str],
        effective_at: datetime,
        mode: str = "",
    ) -> ScheduledChange:
        check_tier_id(tier_id)
        edit = TierEdit("tier_update", tier_id, values, check_mask(mask))
        return await self._schedule_tier(merchant_id, edit, effective_at, apply_mode(mode))

    async def schedule_delete(
        self, merchant_id: UUID, tier_id: str, effective_at: datetime, mode: str | None = None
    ) -> ScheduledChange:
        """As DeleteVIPTier at `effective_at`: with an apply mode, the tier's holders then are
        moved by it (as an immediate delete with that mode moves them); without one (None or
        empty), the change fails at its time if customers still hold the tier."""
        check_tier_id(tier_id)
        checked = optional_apply_mode(mode)
        return await self._schedule_tier(merchant_id, TierEdit("tier_delete", tier_id), effective_at, checked)

    async def _schedule_tier(
        self, merchant_id: UUID, edit: TierEdit, effective_at: datetime, mode: ApplyMode | None
    ) -> ScheduledChange:
        at = self._check_time(effective_at)
        change = ScheduledChange(
            uuid.uuid4(), merchant_id, edit.tier_id, edit.kind, at, mode, tier=edit, created_by=context.actor.get()
        )
        after: list[AfterCommit] = []
        async with self._store(merchant_id) as tx:
            pending = await tx.pending()
            _refuse_collision(pending, change)
            # Locked FOR SHARE until the commit: the set cannot lose a locale this change uses
            # before it is stored (the database then refuses that removal, migration 0041).
            enabled = await tx.locales(lock=True)
            tiers = await tx.tiers()
            before, failing = _replayed(tiers, merchant_id, pending, at, enabled)
            projected = apply_tier_edit(before, merchant_id, edit, at, enabled=enabled)  # raises naming the field
            if edit.kind == "tier_update" and not changed_tier_ids(before, projected):
                raise invalid("update_mask", "changes nothing at effective_at")
            _refuse_breaking(tiers, merchant_id, pending, change, failing, enabled)
            stored = await tx.insert(change)
            # Answers cached before now may live past effective_at: drop them (fills after this
            # commit see the pending change and expire by its time).
            after = await self._invalidate(tx, merchant_id, sorted({t.tier_id for t in [*tiers, *projected]}))
        await _run(after)
        self.scheduled.set()
        log.info("tier change scheduled", change_id=str(change.change_id), kind=edit.kind, tier_id=edit.tier_id)
        return stored

    async def schedule_programme(
        self,
        merchant_id: UUID,
        values: Programme,
        mask: list[str],
        effective_at: datetime,
        mode: str = "",
    ) -> ScheduledChange:
        paths = program_mask(mask)
        at = self._check_time(effective_at)
        checked = apply_mode(mode)
        change = ScheduledChange(
            uuid.uuid4(),
            merchant_id,
            PROGRAM_TARGET,
            "program_update",
            at,
            checked,
            program=values,
            program_mask=tuple(paths),
            created_by=context.actor.get(),
        )
        async with self._store(merchant_id) as tx:
            _refuse_collision(await tx.pending(), change)
            current = (await tx.progression.programme()).programme
            if not changed_paths(current, patched_programme(current, values, paths)):
                raise invalid("update_mask", "changes nothing at effective_at")
            stored = await tx.insert(change)
        self.scheduled.set()
        log.info("programme change scheduled", change_id=str(change.change_id), fields=paths)
        return stored

    # -- list, cancel --------------------------------------------------------------------------

    async def list_changes(self, merchant_id: UUID, *, include_finished: bool = False) -> list[ScheduledChange]:
        async with self._store(merchant_id, readonly=True) as tx:
            return await tx.changes(include_finished=include_finished, limit=MAX_LIST)

    async def cancel(self, merchant_id: UUID, change_id: UUID) -> ScheduledChange:
        """Cancels a pending change before its time; refused once the time has come (it takes
        effect) or when a later pending change only fits because of it."""
        async with self._store(merchant_id) as tx:
            change = await tx.get(change_id, for_update=True)
            if change is None:
                raise NotFound(f"scheduled change {change_id} not found")
            if change.state != "pending":
                raise FailedPrecondition(f"change_id: the change is {change.state}, not pending")
            if change.effective_at <= self._clock():
                raise FailedPrecondition("change_id: its effective_at has passed; it takes effect")
            if change.tier is not None:
                pending = await tx.pending()
                tiers = await tx.tiers()
                enabled = await tx.locales()
                _, failing = _replayed(tiers, merchant_id, pending, pending[-1].effective_at, enabled)
                rest = [c for c in pending if c.change_id != change_id]
                _, failing_without = _replayed(tiers, merchant_id, rest, pending[-1].effective_at, enabled)
                broken = sorted(set(failing_without) - set(failing), key=str)
                if broken:
                    raise FailedPrecondition(
                        f"change_id: pending change {broken[0]} depends on this one; cancel that first"
                    )
            await tx.finish(change_id, "cancelled", config_version=None, error=None, actor=context.actor.get())
            cancelled = await tx.get(change_id)
        assert cancelled is not None
        log.info("scheduled change cancelled", change_id=str(change_id))
        return cancelled

    # -- reads as of a time --------------------------------------------------------------------

    def _as_of(self, as_of: datetime | None) -> tuple[datetime, bool]:
        """(the time read, whether it is in the past)."""
        now = self._clock()
        if as_of is None:
            return now, False
        if as_of.tzinfo is None:
            raise invalid("as_of", "must carry a time zone")
        return as_of, as_of < now

    async def _past(self, tx: ScheduledTransaction, at: datetime) -> PastConfiguration:
        """The configuration in force at a past time: the version kept for it, with the pending
        changes due by then applied (a late activator had not made them a version yet)."""
        kept = await tx.configuration_at(at)
        if isinstance(kept, NotKept):
            raise invalid(
                "as_of",
                f"configurations before {kept.kept_from.isoformat()} are not kept (the merchant's"
                " configuration from before past configurations were recorded)",
            )
        return kept

    async def tiers_at(self, merchant_id: UUID, as_of: datetime | None = None) -> TierView:
        at, past = self._as_of(as_of)
        async with self._store(merchant_id, readonly=True) as tx:
            pending = await tx.pending()
            tiers = (await self._past(tx, at)).tiers if past else await tx.tiers()
            enabled = await tx.locales() if _replays(pending, at) else ()
        current, _ = _replayed(tiers, merchant_id, pending, at, enabled)
        return TierView(current, _next_tier_change(pending, at))

    async def tier_at(
        self, merchant_id: UUID, tier_id: str, as_of: datetime | None = None
    ) -> tuple[VIPTier, datetime | None]:
        """One tier as of a time (NotFound when it does not exist then) and until when that holds."""
        check_tier_id(tier_id)
        at, past = self._as_of(as_of)
        async with self._store(merchant_id, readonly=True) as tx:
            pending = await tx.pending()
            enabled = await tx.locales() if _replays(pending, at) else ()
            if past:
                current, _ = _replayed((await self._past(tx, at)).tiers, merchant_id, pending, at, enabled)
                tier = next((t for t in current if t.tier_id == tier_id), None)
            elif _replays(pending, at):
                current, _ = _replayed(await tx.tiers(), merchant_id, pending, at, enabled)
                tier = next((t for t in current if t.tier_id == tier_id), None)
            else:  # the usual case: one row
                tier = await tx.tier(tier_id)
        if tier is None:
            raise NotFound(f"tier {tier_id!r} not found")
        return tier, _next_tier_change(pending, at)

    async def programme_at(self, merchant_id: UUID, as_of: datetime | None = None) -> StoredProgramme:
        at, past = self._as_of(as_of)
        async with self._store(merchant_id, readonly=True) as tx:
            stored = (await self._past(tx, at)).programme if past else await tx.progression.programme()
            due = [c for c in await tx.pending() if c.program is not None and c.effective_at <= at]
        for change in due:
            assert change.program is not None
            try:
                new = patched_programme(stored.programme, change.program, list(change.program_mask))
            except CampaignError:
                continue
            stored = StoredProgramme(replace(new, version=stored.programme.version + 1), change.effective_at)
        return stored

    # -- activation ------------------------------------------------------------------------------

    async def activate_due(self, now: datetime | None = None, max_merchants: int = 1000) -> int:
        """Applies every change due at `now` (the clock when None); how many were applied or failed.
        One merchant whose activation raises (other than Unavailable: the database is away for
        everyone) is logged and left for the next pass: it does not hold up the merchants after it."""
        at = now or self._clock()
        done = 0
        for merchant_id in await self._store.due_merchants(at, max_merchants):
            try:
                done += await self.activate_merchant(merchant_id, at)
            except Unavailable:
                raise
            except Exception:
                log.exception("activating a merchant's due changes failed; next pass", merchant_id=str(merchant_id))
        return done

    async def activate_merchant(self, merchant_id: UUID, now: datetime | None = None) -> int:
        """Applies the changes of one merchant due at `now` (the clock when None), in time order;
        how many were applied or failed."""
        at = now or self._clock()
        done = 0
        while await self._activate_one(merchant_id, at):
            done += 1
        return done

    async def _activate_one(self, merchant_id: UUID, at: datetime) -> bool:
        after: list[AfterCommit] = []
        outcome = ""
        try:
            async with self._store(merchant_id) as tx:
                change = await tx.claim_due(at)
                if change is None:
                    return False
                try:
                    async with tx.savepoint():
                        touched, qualifying = await self._apply(tx, change)
                except CampaignError as exc:
                    await tx.finish(change.change_id, "failed", config_version=None, error=exc.message[:500], actor="")
                    outcome = f"failed: {exc.message}"
                    log.warning(
                        "scheduled change failed at its time",
                        change_id=str(change.change_id),
                        error=exc.message,
                    )
                    return True
                version = await tx.config_version()
                await tx.finish(change.change_id, "applied", config_version=version, error=None, actor="")
                if qualifying:
                    await tx.enqueue_reassessment(change.change_id, change.mode, version, change.effective_at)
                if touched:
                    after = await self._invalidate(tx, merchant_id, touched)
                outcome = f"applied as configuration version {version}"
        except BaseException as exc:
            if after and isinstance(exc, Unavailable | asyncio.CancelledError):
                await _run(after)  # the commit may have landed: invalidate as if it had
            raise
        await _run(after)
        log.info("scheduled change took effect", change_id=str(change.change_id), outcome=outcome)
        return True

    async def _apply(self, tx: ScheduledTransaction, change: ScheduledChange) -> tuple[list[str], bool]:
        """Writes the change; (tier ids whose cached answers change, whether customers may move)."""
        at = change.effective_at
        actor = change.created_by
        await tx.take_effect_at(at)
        if change.tier is not None:
            before = await tx.tiers(for_update=True)
            enabled = await tx.locales(lock=True)
            after = apply_tier_edit(before, change.merchant_id, change.tier, at, enabled=enabled)
            touched = changed_tier_ids(before, after)
            if change.kind == "tier_delete" and change.mode is not None:
                # As an immediate delete with a mode: the holders move first, flagged with the
                # change's re-assessment job (enqueued here; enqueueing is once per change).
                job_id = await tx.enqueue_reassessment(change.change_id, change.mode, 0, at)
                await tx.move_holders(change.target, change.mode, job_id, at)
            await tx.write_tiers(before, after, at)
            old = {t.tier_id: t for t in before}
            new = {t.tier_id: t for t in after}
            qualifying = False
            messages = []
            for tier_id in touched:
                if tier_id not in new:
                    fields = ["deleted"]
                elif tier_id not in old:
                    fields = list(MUTABLE_FIELDS)
                else:
                    fields = old[tier_id].spec.changed_fields(new[tier_id].spec)
                qualifying = qualifying or fields == ["deleted"] or bool(QUALIFYING_TIER_FIELDS & set(fields))
                qualifying = qualifying or tier_id not in old
                messages.append(_updated(change.merchant_id, tier_id, fields, at, actor))
            await tx.add_outbox(messages)
            return touched, qualifying
        assert change.program is not None
        prog = tx.progression
        current = (await prog.programme(for_update=True)).programme
        new_programme = patched_programme(current, change.program, list(change.program_mask))
        changed = changed_paths(current, new_programme)
        if not changed:
            return [], False
        saved = await prog.save_programme(new_programme)
        await _reschedule(prog, current, saved.programme, changed, at)
        await tx.add_outbox(
            [_updated(change.merchant_id, PROGRAM_EVENT_TIER_ID, [f"program.{p}" for p in changed], at, actor)]
        )
        return [], bool(QUALIFYING_PROGRAM_FIELDS & set(changed))

    async def _invalidate(self, tx: ScheduledTransaction, merchant_id: UUID, tier_ids: list[str]) -> list[AfterCommit]:
        """Blocks the cached answers of `tier_ids` (and the list) before the commit; the steps to
        run after it (service.tiers.TierService._writing does the same for immediate writes)."""
        return [
            await listener.tiers_changing(merchant_id, tier_ids, tx.bump_cache_epoch) for listener in self._listeners
        ]


def _updated(merchant_id: UUID, tier_id: str, fields: list[str], at: datetime, actor: str) -> events.OutboxMessage:
    return events.tier_updated(
        event_id=uuid.uuid4(),
        merchant_id=merchant_id,
        tier_id=tier_id,
        updated_fields=fields,
        updated_at=at,
        actor=actor,
        correlation_id=context.current_correlation_id(),
        traceparent=context.current_traceparent(),
    )


async def _run(steps: list[AfterCommit]) -> None:
    for step in steps:
        await step()


def _refuse_collision(pending: Sequence[ScheduledChange], change: ScheduledChange) -> None:
    for other in pending:
        if other.target == change.target:
            what = "the programme" if change.target == PROGRAM_TARGET else f"tier {change.target!r}"
            field = "effective_at"
            raise FailedPrecondition(
                f"{field}: {what} has a pending change {other.change_id} at {other.effective_at.isoformat()};"
                " cancel it first"
            )


def _refuse_breaking(
    tiers: Sequence[VIPTier],
    merchant_id: UUID,
    pending: Sequence[ScheduledChange],
    change: ScheduledChange,
    failing: dict[UUID, CampaignError],
    enabled: tuple[str, ...],
) -> None:
    """A new change must not make a pending later change stop fitting."""
    if not pending:
        return
    horizon = max(pending[-1].effective_at, change.effective_at)
    merged = sorted([*pending, change], key=lambda c: c.effective_at)
    _, failing_with = _replayed(tiers, merchant_id, merged, horizon, enabled)
    _, failing_before = _replayed(tiers, merchant_id, pending, horizon, enabled)
    broken = sorted(set(failing_with) - set(failing_before) - set(failing) - {change.change_id}, key=str)
    if broken:
        raise FailedPrecondition(f"effective_at: pending change {broken[0]} would no longer fit after this one")
