"""Use cases on VIP tiers: read, evaluate, create, update, delete.

Every change emits its `vip_tier.updated` event into the unit of work (written to the outbox in
the same transaction), and listeners (cache invalidation) hear of the tiers the unit of work
wrote only after the commit (or after a commit whose outcome is unknown).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import structlog

from campaign_service import context, metrics, topics
from campaign_service.domain import events
from campaign_service.domain.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    VersionConflict,
    invalid,
)
from campaign_service.domain.locales import MerchantLocales, locales_violations
from campaign_service.domain.text import script_writable
from campaign_service.domain.tier_changes import TierChangeJob, apply_mode, optional_apply_mode
from campaign_service.domain.tiers import (
    MAX_POINTS,
    MAX_TIERS_PER_MERCHANT,
    MUTABLE_FIELDS,
    TierSpec,
    VIPTier,
    check_mask,
    check_spec,
    check_tier_id,
)
from campaign_service.domain.translations import LocaleCompleteness, report
from campaign_service.service.errors import Unavailable
from campaign_service.service.ports import AfterCommit, CustomerAssignment, TierChangeListener
from campaign_service.service.unit_of_work import TenantUnitOfWork, UnitOfWork

log = structlog.get_logger(__name__)

# The `vip_tier.updated` event of a change of the merchant's locales: like the programme's
# (`_program`), a tier id no tier can have, on the topic audit consumers already read.
LOCALES_EVENT_TIER_ID = "_locales"


@dataclass(frozen=True)
class UpdateResult:
    tier: VIPTier
    updated_fields: list[str]
    job_id: UUID | None = None  # the re-assessment job the change started, if any


class TierService:
    def __init__(self, uow: UnitOfWork, listeners: Sequence[TierChangeListener] = ()) -> None:
        self._uow = uow
        self._listeners = list(listeners)

    async def get_tier(self, merchant_id: UUID, tier_id: str) -> VIPTier:
        check_tier_id(tier_id)
        async with self._uow(merchant_id, readonly=True) as uow:
            tier = await uow.tiers.get(tier_id)
        if tier is None:
            raise NotFound(f"tier {tier_id!r} not found")
        return tier

    async def list_tiers(self, merchant_id: UUID) -> list[VIPTier]:
        async with self._uow(merchant_id, readonly=True) as uow:
            return await uow.tiers.all()

    async def evaluate(self, merchant_id: UUID, points: int) -> VIPTier:
        if not 0 <= points <= 2**63 - 1:
            raise invalid("points", "must be >= 0")
        async with self._uow(merchant_id, readonly=True) as uow:
            tier = await uow.tiers.evaluate(min(points, MAX_POINTS))
        if tier is None:
            raise NotFound("no tier qualifies for this points balance")
        return tier

    async def customer_tier(self, merchant_id: UUID, customer_id: UUID) -> tuple[CustomerAssignment, VIPTier]:
        async with self._uow(merchant_id, readonly=True) as uow:
            assignment = await uow.customers.get(customer_id)
            tier = await uow.tiers.get(assignment.tier_id) if assignment else None
        if assignment is None or tier is None:
            raise NotFound("customer has no tier")
        return assignment, tier

    async def create(self, merchant_id: UUID, tier_id: str, spec: TierSpec, mode: str = "") -> VIPTier:
        """Creates the tier; a re-assessment job (issue 14) applies it to the customers by the
        apply mode (empty: the default)."""
        check_tier_id(tier_id, "tier.tier_id")
        checked = apply_mode(mode)
        async with self._writing(merchant_id) as uow:
            check_spec(spec, enabled=(await uow.locales.get()).locales)
            if await uow.tiers.count() >= MAX_TIERS_PER_MERCHANT:
                raise FailedPrecondition(f"a merchant may have at most {MAX_TIERS_PER_MERCHANT} tiers")
            cleared = await uow.tiers.clear_default(tier_id) if spec.is_default else []
            tier = await uow.tiers.insert(tier_id, spec)
            if await uow.customers.any():
                await uow.tier_change_jobs.enqueue(uuid.uuid4(), mode=checked, config_version=tier.version)
            _announce(uow, merchant_id, tier, list(MUTABLE_FIELDS))
            await _announce_cleared(uow, merchant_id, cleared)
        return tier

    async def update(
        self,
        merchant_id: UUID,
        tier_id: str,
        values: TierSpec,
        mask: list[str],
        expected_version: int = 0,
        mode: str = "",
    ) -> UpdateResult:
        """A change of min_points is applied to the customers by a re-assessment job (issue 14)
        in the apply mode (empty: the default); its id is in the result."""
        check_tier_id(tier_id)
        paths = check_mask(mask)
        _check_expected_version(expected_version)
        checked = apply_mode(mode)
        job_id: UUID | None = None
        async with self._writing(merchant_id) as uow:
            current = await _locked(uow, tier_id, expected_version)
            new_spec = check_spec(current.spec.patched(values, paths), enabled=(await uow.locales.get()).locales)
            changed = current.spec.changed_fields(new_spec)
            if not changed:
                return UpdateResult(current, [])
            cleared = await uow.tiers.clear_default(tier_id) if "is_default" in changed and new_spec.is_default else []
            tier = await uow.tiers.update(tier_id, new_spec, changed)
            if "min_points" in changed and await uow.customers.any():
                job_id = await uow.tier_change_jobs.enqueue(uuid.uuid4(), mode=checked, config_version=tier.version)
            _announce(uow, merchant_id, tier, changed)
            await _announce_cleared(uow, merchant_id, cleared)
        return UpdateResult(tier, changed, job_id)

    async def job(self, merchant_id: UUID, job_id: UUID) -> TierChangeJob:
        """A re-assessment job of the merchant; NotFound for none (or another merchant's)."""
        async with self._uow(merchant_id, readonly=True) as uow:
            job = await uow.tier_change_jobs.get(job_id)
        if job is None:
            raise NotFound(f"tier change job {job_id} not found")
        return job

    async def delete(
        self, merchant_id: UUID, tier_id: str, expected_version: int = 0, mode: str | None = None
    ) -> UUID | None:
        """Deletes the tier. Customers holding it make this FAILED_PRECONDITION unless an apply
        mode is given (None or empty: none): then, in this transaction, a re-assessment job is
        enqueued for the change and the holders are moved by that mode
        (adapters/postgres/tier_change_jobs.py says where to), flagged with the job; the job id
        (None when no mode was given)."""
        check_tier_id(tier_id)
        _check_expected_version(expected_version)
        checked = optional_apply_mode(mode)
        job_id: UUID | None = None
        async with self._writing(merchant_id) as uow:
            current = await _locked(uow, tier_id, expected_version)
            holders = await uow.customers.holders(tier_id)
            if holders and checked is None:
                raise FailedPrecondition(f"{holders} customer(s) hold tier {tier_id!r}; move them first")
            if checked is not None:
                job_id = await uow.tier_change_jobs.enqueue(uuid.uuid4(), mode=checked, config_version=current.version)
                if holders:
                    await uow.tier_change_jobs.move_holders(tier_id, mode=checked, job_id=job_id)
            await uow.tiers.delete(tier_id)
            _announce(uow, merchant_id, current, ["deleted"])
        return job_id

    async def locales(self, merchant_id: UUID) -> MerchantLocales:
        async with self._uow(merchant_id, readonly=True) as uow:
            return await uow.locales.get()

    async def update_locales(
        self, merchant_id: UUID, locales: list[str], expected_version: int = 0
    ) -> tuple[MerchantLocales, bool]:
        """Sets the locales the merchant stores text in; (the stored set, whether it changed).
        A locale that still holds tier text, or that a pending scheduled change will write, cannot
        go (FAILED_PRECONDITION, naming the texts and changes).
        Announced as `vip_tier.updated` of `_locales`; every cached answer of the merchant goes."""
        violations = locales_violations(locales, "locales") or [
            FieldViolation(f"locales[{i}]", f"no letter of {tag!r}'s script is known to this server")
            for i, tag in enumerate(locales)
            if not script_writable(tag)
        ]
        if violations:
            raise InvalidArgument(violations)
        _check_expected_version(expected_version)
        async with self._writing(merchant_id) as uow:
            current = await uow.locales.get(for_update=True)
            if expected_version and current.version != expected_version:
                raise VersionConflict(f"the locales are at version {current.version}, not {expected_version}")
            if tuple(locales) == current.locales:
                return current, False
            tiers = await uow.tiers.all()
            removed = set(current.locales) - set(locales)
            texts: list[tuple[str, AbstractSet[str]]] = [
                (f"{tier.tier_id} {what}", tags) for tier in tiers for what, tags in _texts(tier)
            ]
            if removed:
                texts += await uow.locales.scheduled_uses()
            uses = [(what, removed & tags) for what, tags in texts if removed & tags]
            if uses:
                held = sorted({tag for _, tags in uses for tag in tags})  # not the removed ones without text
                raise FailedPrecondition(
                    f"removed locale(s) {', '.join(held)} still hold text: {'; '.join(w for w, _ in uses[:5])}"
                    + (f" and {len(uses) - 5} more" if len(uses) > 5 else "")
                )
            saved = await uow.locales.save(tuple(locales))
            uow.invalidate([t.tier_id for t in tiers])
            uow.emit(
                events.tier_updated(
                    event_id=uuid.uuid4(),
                    merchant_id=merchant_id,
                    tier_id=LOCALES_EVENT_TIER_ID,
                    updated_fields=["locales"],
                    updated_at=saved.updated_at or datetime.now(UTC),
                    actor=context.actor.get(),
                    correlation_id=context.current_correlation_id(),
                    traceparent=context.current_traceparent(),
                )
            )
        log.info("merchant locales changed", locales=list(saved.locales), version=saved.version)
        return saved, True

    async def translation_report(self, merchant_id: UUID) -> tuple[MerchantLocales, list[LocaleCompleteness]]:
        """Completeness of every enabled locale over the merchant's tiers (domain/translations.py)."""
        async with self._uow(merchant_id, readonly=True) as uow:
            locales = await uow.locales.get()
            tiers = await uow.tiers.all()
        completeness = report(tiers, locales.locales)
        for entry in completeness:
            metrics.TRANSLATION_COMPLETENESS.labels(entry.locale).observe(entry.fraction)
        return locales, completeness

    @asynccontextmanager
    async def _writing(self, merchant_id: UUID) -> AsyncIterator[TenantUnitOfWork]:
        """A write transaction. Listeners hear of the tiers it changed inside it, after the use
        case's last step and before the commit (the cache blocks fills of those keys, or advances
        the durable cache epoch in this transaction when Redis cannot be reached), and again after
        the commit, also when the commit may or may not have landed (the database connection
        failed, or the request was cancelled, with the commit in flight): a needless invalidation
        costs a cache miss, a missing one would leave the old answer cached."""
        after: list[AfterCommit] = []
        changed: list[str] = []
        try:
            async with self._uow(merchant_id) as uow:
                yield uow
                changed = uow.changed_tier_ids
                for listener in self._listeners if changed else ():
                    after.append(await listener.tiers_changing(merchant_id, changed, uow.bump_cache_epoch))
        except BaseException as exc:
            if after:
                if isinstance(exc, Unavailable | asyncio.CancelledError):
                    log.warning("outcome of a tier change unknown; invalidated as if committed", tier_ids=changed)
                for step in after:
                    await step()
            raise
        for tier_id in changed:
            log.info("tier change committed", tier_id=tier_id, event_type=topics.VIP_TIER_UPDATED)
        for step in after:
            await step()


def _announce(uow: TenantUnitOfWork, merchant_id: UUID, tier: VIPTier, fields: list[str]) -> None:
    uow.emit(
        events.tier_updated(
            event_id=uuid.uuid4(),
            merchant_id=merchant_id,
            tier_id=tier.tier_id,
            updated_fields=fields,
            updated_at=tier.updated_at,
            actor=context.actor.get(),
            correlation_id=context.current_correlation_id(),
            traceparent=context.current_traceparent(),
        )
    )


async def _announce_cleared(uow: TenantUnitOfWork, merchant_id: UUID, tier_ids: list[str]) -> None:
    """The tiers that stopped being the default, announced with their new version's time."""
    for other in tier_ids:
        tier = await uow.tiers.get(other)
        if tier is not None:
            _announce(uow, merchant_id, tier, ["is_default"])


def _texts(tier: VIPTier) -> list[tuple[str, set[str]]]:
    """(what, locales) of each text a tier holds: its name and translations, each perk's label."""
    spec = tier.spec
    out = [("name", {spec.locale, *spec.translations})]
    out += [(f"perk {p.code}", set(p.label)) for p in spec.benefits.custom_perks]
    return out


def _check_expected_version(expected_version: int) -> None:
    if expected_version < 0:
        raise invalid("expected_version", "must be >= 0 (0: any version)")


async def _locked(uow: TenantUnitOfWork, tier_id: str, expected_version: int) -> VIPTier:
    """The tier, row-locked until commit; raises unless it exists at the expected version."""
    current = await uow.tiers.get(tier_id, for_update=True)
    if current is None:
        raise NotFound(f"tier {tier_id!r} not found")
    if expected_version and current.version != expected_version:
        raise VersionConflict(f"tier {tier_id!r} is at version {current.version}, not {expected_version}")
    return current
