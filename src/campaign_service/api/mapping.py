"""Conversions between protobuf messages and domain values."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.ids import parse_uuid
from campaign_service.domain.locales import MerchantLocales, describe
from campaign_service.domain.tiers import TierSpec, VIPTier
from campaign_service.domain.translations import LocaleCompleteness

__all__ = ["locales_to_proto", "parse_uuid", "report_to_proto", "spec_from_proto", "tier_to_proto"]


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
        display_perks=[
            pb.DisplayPerk(code=p.code, label=p.label, locale=p.locale, direction=p.direction) for p in display.perks
        ],
        resolved_direction=display.direction,
        display_min_points=display.min_points,
        display_discount=display.discount,
        display_bonus_points=display.bonus_points,
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


def locales_to_proto(merchant_id: UUID, stored: MerchantLocales) -> pb.MerchantLocales:
    msg = pb.MerchantLocales(
        merchant_id=str(merchant_id),
        locales=stored.locales,
        version=stored.version,
        details=[pb.LocaleInfo(**describe(tag)) for tag in stored.locales],
    )
    if stored.updated_at is not None:
        msg.updated_at.FromDatetime(stored.updated_at)
    return msg


def report_to_proto(
    merchant_id: UUID, stored: MerchantLocales, entries: Sequence[LocaleCompleteness]
) -> pb.TranslationReport:
    return pb.TranslationReport(
        merchant_id=str(merchant_id),
        locales_version=stored.version,
        locales=[
            pb.LocaleCompleteness(
                locale=e.locale,
                direction=e.direction,
                total=e.total,
                present=e.present,
                percent_complete=round(100 * e.fraction, 2),
                gaps=[
                    pb.TranslationGap(
                        tier_id=g.tier_id, perk_code=g.perk_code, fallback_locale=g.fallback_locale, copied=g.copied
                    )
                    for g in e.gaps
                ],
            )
            for e in entries
        ],
    )
