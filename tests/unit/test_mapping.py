"""Protobuf <-> domain conversions, and the serialized answers the read cache stores."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from campaign_service.api.mapping import render_tier, render_tiers, spec_from_proto, tier_to_proto
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.tiers import TierSpec, VIPTier

SPEC = TierSpec(
    name="זהב",
    locale="he",
    min_points=2_147_483_647,
    discount_percentage=100,
    free_shipping=True,
    exclusive_access=True,
    benefits=Benefits(
        bonus_points=1_000_000_000,
        custom_perks=(Perk("lounge", {"ar": "صالة", "he": "טרקלין"}), Perk("gift", {"en": "Gift"})),
    ),
    translations={"ar": "ذهبي", "en": "Gold"},
    is_default=True,
)
TIER = VIPTier(
    id=uuid.UUID("00000000-0000-4000-8000-00000000000a"),
    merchant_id=uuid.UUID("123e4567-e89b-12d3-a456-426614174000"),
    tier_id="gold",
    spec=SPEC,
    version=7,
    created_at=datetime(2026, 1, 2, 3, 4, 5, 123_000, tzinfo=UTC),
    updated_at=datetime(2026, 2, 3, 4, 5, 6, 456_000, tzinfo=UTC),
)


def test_tier_to_proto_carries_every_field() -> None:
    msg = tier_to_proto(TIER, "ar-SA")
    assert msg.id == "00000000-0000-4000-8000-00000000000a"
    assert msg.merchant_id == "123e4567-e89b-12d3-a456-426614174000"
    assert msg.tier_id == "gold"
    assert (msg.name, msg.locale) == ("זהב", "he")
    assert msg.min_points == 2_147_483_647
    assert msg.discount_percentage == 100
    assert msg.free_shipping is True
    assert msg.exclusive_access is True
    assert msg.is_default is True
    assert msg.version == 7
    assert msg.benefits.bonus_points == 1_000_000_000
    assert [(p.code, dict(p.label)) for p in msg.benefits.custom_perks] == [
        ("lounge", {"ar": "صالة", "he": "טרקלין"}),
        ("gift", {"en": "Gift"}),
    ]
    assert dict(msg.translations) == {"ar": "ذهبي", "en": "Gold"}
    assert (msg.resolved_locale, msg.display_name) == ("ar", "ذهبي")
    assert [(p.code, p.label, p.locale) for p in msg.display_perks] == [
        ("lounge", "صالة", "ar"),
        ("gift", "Gift", "en"),
    ]
    assert msg.created_at.ToDatetime(tzinfo=UTC) == TIER.created_at
    assert msg.updated_at.ToDatetime(tzinfo=UTC) == TIER.updated_at


def test_the_tiers_default_locale_answers_when_the_requested_one_is_missing() -> None:
    msg = tier_to_proto(TIER, "fr")
    assert (msg.resolved_locale, msg.display_name) == ("he", "זהב")
    assert [(p.label, p.locale) for p in msg.display_perks] == [("טרקלין", "he"), ("Gift", "en")]


def test_spec_from_proto_round_trips() -> None:
    assert spec_from_proto(tier_to_proto(TIER, "")) == SPEC


def test_spec_from_proto_defaults() -> None:
    assert spec_from_proto(pb.VIPTier(name="Gold")) == TierSpec(name="Gold")
    assert spec_from_proto(pb.VIPTier(name="Gold", locale="ar")).locale == "ar"


def test_rendered_answers_are_the_serialized_messages() -> None:
    assert pb.VIPTier.FromString(render_tier(TIER, "en")) == tier_to_proto(TIER, "en")
    other = VIPTier(
        uuid.uuid4(), TIER.merchant_id, "silver", TierSpec(name="Silver"), 1, TIER.created_at, TIER.updated_at
    )
    listed = pb.ListVIPTiersResponse.FromString(render_tiers([TIER, other], "ar"))
    assert list(listed.tiers) == [tier_to_proto(TIER, "ar"), tier_to_proto(other, "ar")]
    assert listed.tiers[0].display_name == "ذهبي"
    assert pb.ListVIPTiersResponse.FromString(render_tiers([], "he")) == pb.ListVIPTiersResponse()
