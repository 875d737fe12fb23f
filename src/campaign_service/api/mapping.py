"""Conversions between protobuf messages and domain values."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.ids import parse_uuid
from campaign_service.domain.progression import Programme
from campaign_service.domain.tiers import TierSpec, VIPTier
from campaign_service.service.progression_api import HistoryPage, TierStatus
from campaign_service.service.progression_api_ports import StoredProgramme

__all__ = ["parse_uuid", "spec_from_proto", "tier_to_proto"]


def spec_from_proto(tier: pb.VIPTier) -> TierSpec:
    return TierSpec(
        name=tier.name,
        locale=tier.locale or "en",
        min_points=tier.min_points,
        discount_percentage=tier.discount_percentage,
        free_shipping=tier.free_shipping,
        exclusive_access=tier.exclusive_access,
        benefits=Benefits(
            bonus_points=tier.benefits.bonus_points,
            custom_perks=tuple(Perk(code=p.code, label=dict(p.label)) for p in tier.benefits.custom_perks),
        ),
        translations=dict(tier.translations),
        is_default=tier.is_default,
    )


def tier_to_proto(tier: VIPTier, locale: str) -> pb.VIPTier:
    spec = tier.spec
    display = tier.display(locale)
    msg = pb.VIPTier(
        id=str(tier.id),
        merchant_id=str(tier.merchant_id),
        tier_id=tier.tier_id,
        name=spec.name,
        locale=spec.locale,
        min_points=spec.min_points,
        discount_percentage=spec.discount_percentage,
        free_shipping=spec.free_shipping,
        exclusive_access=spec.exclusive_access,
        benefits=pb.Benefits(
            bonus_points=spec.benefits.bonus_points,
            custom_perks=[pb.Perk(code=p.code, label=p.label) for p in spec.benefits.custom_perks],
        ),
        translations=spec.translations,
        is_default=spec.is_default,
        version=tier.version,
        resolved_locale=display.locale,
        display_name=display.name,
        display_perks=[pb.DisplayPerk(code=p.code, label=p.label, locale=p.locale) for p in display.perks],
    )
    msg.created_at.FromDatetime(tier.created_at)
    msg.updated_at.FromDatetime(tier.updated_at)
    return msg


def render_tier(tier: VIPTier, locale: str) -> bytes:
    """The serialized GetVIPTier answer (what the read cache stores)."""
    return tier_to_proto(tier, locale).SerializeToString()


def render_tiers(tiers: Sequence[VIPTier], locale: str) -> bytes:
    """The serialized ListVIPTiers answer (what the read cache stores)."""
    return pb.ListVIPTiersResponse(tiers=[tier_to_proto(t, locale) for t in tiers]).SerializeToString()


def programme_from_proto(program: pb.TierProgram) -> Programme:
    """The request's values as a Programme (unvalidated: the use case checks the patched result)."""
    return Programme(
        window=program.window,  # type: ignore[arg-type]  # checked by Programme.violations
        time_zone=program.time_zone,
        window_months=program.rolling_months or None,
        downgrade_policy=program.downgrade_policy,  # type: ignore[arg-type]
        grace_days=program.grace_days,
        reversal_downgrades_now=program.reversal_downgrades_now,
        entry_bonus=program.entry_bonus,  # type: ignore[arg-type]
        downgrade_warning_days=program.downgrade_warning_days,
    )


def programme_to_proto(merchant_id: UUID, stored: StoredProgramme) -> pb.TierProgram:
    p = stored.programme
    msg = pb.TierProgram(
        merchant_id=str(merchant_id),
        window=p.window,
        rolling_months=p.window_months or 0,
        time_zone=p.time_zone,
        downgrade_policy=p.downgrade_policy,
        grace_days=p.grace_days,
        reversal_downgrades_now=p.reversal_downgrades_now,
        entry_bonus=p.entry_bonus,
        downgrade_warning_days=p.downgrade_warning_days,
        version=p.version,
    )
    if stored.updated_at is not None:
        msg.updated_at.FromDatetime(stored.updated_at)
    return msg


def status_to_proto(merchant_id: UUID, customer_id: UUID, s: TierStatus, locale: str) -> pb.CustomerTierStatus:
    msg = pb.CustomerTierStatus(
        merchant_id=str(merchant_id),
        customer_id=str(customer_id),
        tier=tier_to_proto(s.tier, locale),
        window_points=s.window_points,
        points_to_next_tier=s.points_to_next_tier,
        points_to_keep_tier=s.points_to_keep_tier,
        tier_if_deadline_now=tier_to_proto(s.tier_if_deadline_now, locale),
        floor_tier_id=s.floor_tier_id or "",
    )
    msg.since.FromDatetime(s.since)
    if s.next_tier is not None:
        msg.next_tier.CopyFrom(tier_to_proto(s.next_tier, locale))
    if s.deadline is not None:
        msg.deadline.FromDatetime(s.deadline)
    if s.floor_until is not None:
        msg.floor_until.FromDatetime(s.floor_until)
    return msg


def history_to_proto(page: HistoryPage) -> pb.ListCustomerTierHistoryResponse:
    out = pb.ListCustomerTierHistoryResponse(next_page_token=page.next_page_token)
    for r in page.entries:
        entry = out.entries.add(
            from_tier_id=r.from_tier_id or "",
            tier_id=r.tier_id,
            direction=r.direction,
            reason=r.reason,
            program_version=r.program_version,
            qualifying_points=r.qualifying_points,
            cause_event_id=str(r.cause_event_id) if r.cause_event_id else "",
            actor=r.actor,
            source=r.source,
        )
        entry.at.FromDatetime(r.at)
    return out
