"""Pure rules of tiers: spec validation with field paths, benefits, masks, patches, display."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from campaign_service.domain.benefits import Benefits, Perk, benefits_violations
from campaign_service.domain.errors import InvalidArgument
from campaign_service.domain.tiers import MUTABLE_FIELDS, TierSpec, VIPTier, check_mask, check_tier_id, spec_violations


def fields_of(spec: TierSpec) -> list[str]:
    return [v.field for v in spec_violations(spec)]


def test_valid_spec_has_no_violations() -> None:
    spec = TierSpec(
        name="Gold",
        min_points=1000,
        discount_percentage=10,
        benefits=Benefits(bonus_points=100, custom_perks=(Perk("lounge", {"en": "Lounge", "ar": "صالة"}),)),
        translations={"ar": "ذهبي", "he": "זהב"},
    )
    assert spec_violations(spec) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (TierSpec(name="Gold", min_points=-1), "tier.min_points"),
        (TierSpec(name="Gold", min_points=2**31), "tier.min_points"),
        (TierSpec(name="Gold", discount_percentage=-1), "tier.discount_percentage"),
        (TierSpec(name="Gold", discount_percentage=101), "tier.discount_percentage"),
        (TierSpec(name="Gold", locale="fr"), "tier.locale"),
        (TierSpec(name=""), "tier.name"),
        (TierSpec(name="Gold", locale="ar"), "tier.name"),
        (TierSpec(name="Gold", translations={"fr": "Or"}), "tier.translations.fr"),
        (TierSpec(name="Gold", translations={"he": "Gold"}), "tier.translations.he"),
        (TierSpec(name="Gold", translations={"en": "Gold"}), "tier.translations.en"),
        (TierSpec(name="Gold", benefits=Benefits(bonus_points=-5)), "tier.benefits.bonus_points"),
    ],
)
def test_each_rule_names_its_field(spec: TierSpec, field: str) -> None:
    assert fields_of(spec) == [field]


def test_all_violations_reported_at_once() -> None:
    spec = TierSpec(name="", min_points=-1, discount_percentage=500)
    assert fields_of(spec) == ["tier.name", "tier.min_points", "tier.discount_percentage"]


def test_benefit_perk_rules() -> None:
    perks = (
        Perk("BAD CODE", {"en": "x"}),
        Perk("dup", {"en": "One"}),
        Perk("dup", {"en": "Two"}),
        Perk("nolabel", {}),
        Perk("badloc", {"fr": "Salon"}),
        Perk("arabic", {"ar": "Lounge"}),
    )
    got = [v.field for v in benefits_violations(Benefits(custom_perks=perks), "tier.benefits")]
    assert got == [
        "tier.benefits.custom_perks[0].code",
        "tier.benefits.custom_perks[2].code",
        "tier.benefits.custom_perks[3].label",
        "tier.benefits.custom_perks[4].label",
        "tier.benefits.custom_perks[5].label.ar",
    ]


def test_benefit_bounds() -> None:
    many = tuple(Perk(f"p{i}", {"en": "x"}) for i in range(51))
    assert [v.field for v in benefits_violations(Benefits(custom_perks=many), "b")] == ["b.custom_perks"]
    fifty = tuple(Perk(f"p{i}", {"en": "x" * 200, "ar": "ب" * 200, "he": "ש" * 200}) for i in range(50))
    size = benefits_violations(Benefits(custom_perks=fifty), "b")
    assert [v.field for v in size] == ["b"]
    assert "16384 bytes" in size[0].description


def test_benefits_json_round_trip() -> None:
    b = Benefits(bonus_points=7, custom_perks=(Perk("gift", {"en": "Gift", "he": "מתנה"}),))
    assert Benefits.from_json(b.to_json()) == b


@pytest.mark.parametrize("tier_id", ["gold", "g", "gold-plus_2", "0tier", "a" * 64])
def test_good_tier_ids(tier_id: str) -> None:
    assert check_tier_id(tier_id) == tier_id


@pytest.mark.parametrize(
    "tier_id", ["", "Gold", "-gold", "gold plus", "a" * 65, "gold'; DROP TABLE vip_tiers;--", "ذهب"]
)
def test_bad_tier_ids(tier_id: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_tier_id(tier_id)
    assert err.value.violations[0].field == "tier_id"


def test_masks() -> None:
    assert check_mask(["*"]) == frozenset(MUTABLE_FIELDS)
    assert check_mask(["name", "min_points"]) == {"name", "min_points"}
    for bad in ([], ["version"], ["id"], ["name", "nope"]):
        with pytest.raises(InvalidArgument) as err:
            check_mask(bad)
        assert err.value.violations[0].field == "update_mask"


def test_patch_changes_only_masked_fields() -> None:
    current = TierSpec(name="Gold", min_points=100, discount_percentage=5)
    incoming = TierSpec(name="Ignored", min_points=999, discount_percentage=0)
    patched = current.patched(incoming, frozenset({"min_points"}))
    assert patched == TierSpec(name="Gold", min_points=999, discount_percentage=5)
    assert current.changed_fields(patched) == ["min_points"]


def test_display_resolves_name_and_each_perk() -> None:
    now = datetime.now(UTC)
    spec = TierSpec(
        name="זהב",
        locale="he",
        translations={"en": "Gold"},
        benefits=Benefits(custom_perks=(Perk("a", {"en": "Lounge", "ar": "صالة"}), Perk("b", {"he": "מתנה"}))),
    )
    tier = VIPTier(uuid.uuid4(), uuid.uuid4(), "gold", spec, 1, now, now)
    d = tier.display("ar-EG")
    assert (d.locale, d.name) == ("he", "זהב")  # no Arabic name -> tier default (he)
    assert [(p.code, p.label, p.locale) for p in d.perks] == [("a", "صالة", "ar"), ("b", "מתנה", "he")]
    d = tier.display("en-US")
    assert (d.locale, d.name) == ("en", "Gold")
