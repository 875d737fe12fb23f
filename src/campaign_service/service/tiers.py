"""Use cases on VIP tiers: read, evaluate, create, update, delete.

Every change writes its `vip_tier.updated` event to the outbox in the same transaction, and
listeners (cache invalidation) hear about it only after the commit (or after a commit whose
outcome is unknown).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from uuid import UUID

import structlog

from campaign_service import context, topics
from campaign_service.domain import events
from campaign_service.domain.errors import FailedPrecondition, NotFound, VersionConflict, invalid
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
from campaign_service.service.errors import Unavailable
from campaign_service.service.ports import (
    CustomerAssignment,
    TenantTransaction,
    TierChangeListener,
    UnitOfWork,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class UpdateResult:
    tier: VIPTier
    updated_fields: list[str]


class TierService:
    def __init__(self, uow: UnitOfWork, listeners: Sequence[TierChangeListener] = ()) -> None:
        self._uow = uow
        self._listeners = list(listeners)

    def add_listener(self, listener: TierChangeListener) -> None:
        self._listeners.append(listener)

    async def get_tier(self, merchant_id: UUID, tier_id: str) -> VIPTier:
        check_tier_id(tier_id)
        async with self._uow(merchant_id, readonly=True) as tx:
            tier = await tx.get_tier(tier_id)
        if tier is None:
            raise NotFound(f"tier {tier_id!r} not found")
        return tier

    async def list_tiers(self, merchant_id: UUID) -> list[VIPTier]:
        async with self._uow(merchant_id, readonly=True) as tx:
            return await tx.list_tiers()

    async def evaluate(self, merchant_id: UUID, points: int) -> VIPTier:
        if not 0 <= points <= 2**63 - 1:
            raise invalid("points", "must be >= 0")
        async with self._uow(merchant_id, readonly=True) as tx:
            tier = await tx.evaluate(min(points, MAX_POINTS))
        if tier is None:
            raise NotFound("no tier qualifies for this points balance")
        return tier

    async def customer_tier(self, merchant_id: UUID, customer_id: UUID) -> tuple[CustomerAssignment, VIPTier]:
        async with self._uow(merchant_id, readonly=True) as tx:
            assignment = await tx.get_customer(customer_id)
            tier = await tx.get_tier(assignment.tier_id) if assignment else None
        if assignment is None or tier is None:
            raise NotFound("customer has no tier")
        return assignment, tier

    async def create(self, merchant_id: UUID, tier_id: str, spec: TierSpec) -> VIPTier:
        check_tier_id(tier_id, "tier.tier_id")
        check_spec(spec)
        async with self._writing(merchant_id) as (tx, changed_tiers):
            if await tx.count_tiers() >= MAX_TIERS_PER_MERCHANT:
                raise FailedPrecondition(f"a merchant may have at most {MAX_TIERS_PER_MERCHANT} tiers")
            cleared = await tx.clear_default(tier_id) if spec.is_default else []
            tier = await tx.insert_tier(tier_id, spec)
            await self._announce(tx, merchant_id, tier, list(MUTABLE_FIELDS))
            await self._announce_cleared(tx, merchant_id, cleared)
            changed_tiers += [tier_id, *cleared]
        return tier

    async def update(
        self,
        merchant_id: UUID,
        tier_id: str,
        values: TierSpec,
        mask: list[str],
        expected_version: int = 0,
    ) -> UpdateResult:
        check_tier_id(tier_id)
        paths = check_mask(mask)
        _check_expected_version(expected_version)
        async with self._writing(merchant_id) as (tx, changed_tiers):
            current = await _locked(tx, tier_id, expected_version)
            new_spec = check_spec(current.spec.patched(values, paths))
            changed = current.spec.changed_fields(new_spec)
            if not changed:
                return UpdateResult(current, [])
            cleared = await tx.clear_default(tier_id) if "is_default" in changed and new_spec.is_default else []
            tier = await tx.update_tier(tier_id, new_spec, changed)
            await self._announce(tx, merchant_id, tier, changed)
            await self._announce_cleared(tx, merchant_id, cleared)
            changed_tiers += [tier_id, *cleared]
        return UpdateResult(tier, changed)

    async def delete(self, merchant_id: UUID, tier_id: str, expected_version: int = 0) -> None:
        check_tier_id(tier_id)
        _check_expected_version(expected_version)
        async with self._writing(merchant_id) as (tx, changed_tiers):
            current = await _locked(tx, tier_id, expected_version)
            holders = await tx.customers_holding(tier_id)
            if holders:
                raise FailedPrecondition(f"{holders} customer(s) hold tier {tier_id!r}; move them first")
            await tx.delete_tier(tier_id)
            await self._announce(tx, merchant_id, current, ["deleted"])
            changed_tiers.append(tier_id)

    async def _announce(self, tx: TenantTransaction, merchant_id: UUID, tier: VIPTier, fields: list[str]) -> None:
        await tx.add_outbox(
            [
                events.tier_updated(
                    event_id=uuid.uuid4(),
                    merchant_id=merchant_id,
                    tier_id=tier.tier_id,
                    updated_fields=fields,
                    updated_at=tier.updated_at,
                    actor=context.actor.get(),
                    correlation_id=context.current_correlation_id(),
                )
            ]
        )

    async def _announce_cleared(self, tx: TenantTransaction, merchant_id: UUID, tier_ids: list[str]) -> None:
        for other in tier_ids:
            tier = await tx.get_tier(other)
            if tier is not None:
                await self._announce(tx, merchant_id, tier, ["is_default"])

    @asynccontextmanager
    async def _writing(self, merchant_id: UUID) -> AsyncIterator[tuple[TenantTransaction, list[str]]]:
        """A write transaction, and a list into which the use case puts the tiers it changed as
        the last thing before the commit. Listeners hear of them after the commit, and also when
        the commit may or may not have landed (the database connection failed, or the request was
        cancelled, with the commit in flight): a needless invalidation costs a cache miss, a
        missing one would leave the old answer cached until its TTL."""
        changed: list[str] = []
        try:
            async with self._uow(merchant_id) as tx:
                yield tx, changed
        except (Unavailable, asyncio.CancelledError):
            if changed:
                log.warning("outcome of a tier change unknown; invalidated as if committed", tier_ids=changed)
                await self._notify(merchant_id, changed)
            raise
        if changed:
            for tier_id in changed:
                log.info("tier change committed", tier_id=tier_id, event_type=topics.VIP_TIER_UPDATED)
            await self._notify(merchant_id, changed)

    async def _notify(self, merchant_id: UUID, tier_ids: list[str]) -> None:
        for listener in self._listeners:
            await listener.tiers_changed(merchant_id, tier_ids)


def _check_expected_version(expected_version: int) -> None:
    if expected_version < 0:
        raise invalid("expected_version", "must be >= 0 (0: any version)")


async def _locked(tx: TenantTransaction, tier_id: str, expected_version: int) -> VIPTier:
    """The tier, row-locked until commit; raises unless it exists at the expected version."""
    current = await tx.get_tier(tier_id, for_update=True)
    if current is None:
        raise NotFound(f"tier {tier_id!r} not found")
    if expected_version and current.version != expected_version:
        raise VersionConflict(f"tier {tier_id!r} is at version {current.version}, not {expected_version}")
    return current
