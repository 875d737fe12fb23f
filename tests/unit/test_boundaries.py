"""Each limit accepted exactly at the limit and refused one past it; the fallbacks no other test
pins. Found by mutation testing (scripts/mutation): a boundary moved by one went unnoticed."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from campaign_service.adapters.auth.principals import make_principal
from campaign_service.domain.access import MAX_SUBJECT_CHARS
from campaign_service.domain.benefits import (
    MAX_BONUS_POINTS,
    MAX_JSON_BYTES,
    MAX_LABEL_CHARS,
    MAX_PERKS,
    Benefits,
    Perk,
    benefits_violations,
)
from campaign_service.domain.errors import InvalidArgument
from campaign_service.domain.locales import check_requested, display_key, resolve
from campaign_service.domain.text import text_violations
from campaign_service.domain.tiers import MAX_NAME_CHARS, MAX_POINTS, TierSpec, VIPTier, spec_violations
from campaign_service.service.errors import Unauthenticated


def fields_of(spec: TierSpec) -> list[str]:
    return [v.field for v in spec_violations(spec)]


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        (TierSpec(name="Gold", discount_percentage=0), []),
        (TierSpec(name="Gold", discount_percentage=100), []),
        (TierSpec(name="Gold", discount_percentage=101), ["tier.discount_percentage"]),
        (TierSpec(name="Gold", discount_percentage=-1), ["tier.discount_percentage"]),
        (TierSpec(name="Gold", min_points=0), []),
        (TierSpec(name="Gold", min_points=2_147_483_647), []),
        (TierSpec(name="Gold", min_points=2_147_483_648), ["tier.min_points"]),
        (TierSpec(name="Gold", min_points=-1), ["tier.min_points"]),
        (TierSpec(name="G" * MAX_NAME_CHARS), []),
        (TierSpec(name="G" * (MAX_NAME_CHARS + 1)), ["tier.name"]),
        (TierSpec(name="Gold", translations={"ar": "ذ" * 100}), []),
        (TierSpec(name="Gold", translations={"ar": "ذ" * 101}), ["tier.translations.ar"]),
    ],
)
def test_tier_limits(spec: TierSpec, fields: list[str]) -> None:
    assert MAX_POINTS == 2_147_483_647
    assert MAX_NAME_CHARS == 100
    assert fields_of(spec) == fields


def test_violation_messages_name_the_limits() -> None:
    [points] = spec_violations(TierSpec(name="Gold", min_points=-1))
    assert points.description == "must be between 0 and 2147483647"
    [discount] = spec_violations(TierSpec(name="Gold", discount_percentage=101))
    assert discount.description == "must be between 0 and 100"
    [locale] = spec_violations(TierSpec(name="Gold", locale="fr-FR-xxxxxxxxxxxxxxxxx"))
    assert locale.description == "not a well-formed BCP 47 language tag"
    [locale] = spec_violations(TierSpec(name="Or", locale="fr-FR"))
    assert locale.description == "locale 'fr-FR' is not enabled for this merchant; enabled: en, ar, he"
    assert spec_violations(TierSpec(name="Or", locale="fr-FR"), enabled=("fr-FR",)) == []
    [translation] = spec_violations(TierSpec(name="Gold", translations={"fr-CA-yyyyyyyyyyyy": "Or"}))
    assert translation.field == "tier.translations.fr-CA-yyyyyyyyyy"  # 16 characters of it
    assert translation.description == "not a well-formed BCP 47 language tag"
    [same] = spec_violations(TierSpec(name="Gold", translations={"en": "Gold"}))
    assert same.description == "duplicates the default locale; set `name` instead"
    assert fields_of(TierSpec(name="Gold", locale="ar")) == ["tier.name"]  # checked in its own locale
    assert spec_violations(TierSpec(name="Gold"), prefix="") == []
    assert [v.field for v in spec_violations(TierSpec(name=""), prefix="x.")] == ["x.name"]


@pytest.mark.parametrize(
    ("bonus", "fields"),
    [
        (0, []),
        (MAX_BONUS_POINTS, []),
        (MAX_BONUS_POINTS + 1, ["b.bonus_points"]),
        (-1, ["b.bonus_points"]),
    ],
)
def test_bonus_points_limit(bonus: int, fields: list[str]) -> None:
    assert MAX_BONUS_POINTS == 1_000_000_000
    assert [v.field for v in benefits_violations(Benefits(bonus_points=bonus), "b")] == fields


def test_perk_count_and_label_limits() -> None:
    assert (MAX_PERKS, MAX_LABEL_CHARS) == (50, 200)
    perks = tuple(Perk(f"p{i}", {"en": "x"}) for i in range(MAX_PERKS))
    assert benefits_violations(Benefits(custom_perks=perks), "b") == []
    too_many = benefits_violations(Benefits(custom_perks=(*perks, Perk("one_more", {"en": "x"}))), "b")
    assert [(v.field, v.description) for v in too_many] == [("b.custom_perks", "must have at most 50 perks")]
    long_label = Benefits(custom_perks=(Perk("p", {"en": "x" * MAX_LABEL_CHARS}),))
    assert benefits_violations(long_label, "b") == []
    too_long = Benefits(custom_perks=(Perk("p", {"en": "x" * (MAX_LABEL_CHARS + 1)}),))
    assert [v.field for v in benefits_violations(too_long, "b")] == ["b.custom_perks[0].label.en"]


def test_perk_rules_name_each_perk() -> None:
    benefits = Benefits(
        custom_perks=(
            Perk("ok", {"en": "Fine"}),
            Perk("ok", {"fr": "Bien"}),
            Perk("BAD", {}),
        )
    )
    assert [(v.field, v.description) for v in benefits_violations(benefits, "b")] == [
        ("b.custom_perks[1].code", "duplicate perk code 'ok'"),
        ("b.custom_perks[1].label", "locale 'fr' is not enabled for this merchant; enabled: en, ar, he"),
        ("b.custom_perks[2].code", "must be 1-64 characters of a-z, 0-9 and _"),
        ("b.custom_perks[2].label", "must have at least one locale"),
    ]
    # a locale not enabled: label is not checked further; a bad code does not stop the rest
    odd = Benefits(custom_perks=(Perk("BAD", {"fr": " ", "he": "x"}),))
    assert [v.field for v in benefits_violations(odd, "b")] == [
        "b.custom_perks[0].code",
        "b.custom_perks[0].label",
        "b.custom_perks[0].label.he",
    ]


def _json_size(benefits: Benefits) -> int:
    return len(json.dumps(benefits.to_json(), ensure_ascii=False).encode())


def _benefits_of_size(size: int) -> Benefits:
    """Valid benefits whose stored JSON is exactly `size` bytes (Hebrew letters are 2 bytes)."""
    full = tuple(Perk(f"p{i}", {"en": "a" * 200, "he": "א" * 200}) for i in range(25))
    for hebrew in range(1, 201):
        shortest = Benefits(custom_perks=(*full, Perk("last", {"en": "a", "he": "א" * hebrew})))
        english = 1 + size - _json_size(shortest)
        if 1 <= english <= MAX_LABEL_CHARS:
            benefits = Benefits(custom_perks=(*full, Perk("last", {"en": "a" * english, "he": "א" * hebrew})))
            assert _json_size(benefits) == size
            return benefits
    raise AssertionError(f"no benefits of {size} bytes")


def test_benefits_json_limit_is_16_kib_exactly() -> None:
    assert MAX_JSON_BYTES == 16 * 1024
    assert benefits_violations(_benefits_of_size(16 * 1024), "b") == []
    [too_big] = benefits_violations(_benefits_of_size(16 * 1024 + 1), "b")
    assert too_big.field == "b"
    assert too_big.description == "must encode to at most 16384 bytes of JSON (got 16385)"


def test_benefits_json_round_trip_and_defaults() -> None:
    benefits = Benefits(bonus_points=5, custom_perks=(Perk("lounge", {"en": "Lounge", "ar": "صالة"}),))
    assert benefits.to_json() == {
        "bonus_points": 5,
        "custom_perks": [{"code": "lounge", "label": {"en": "Lounge", "ar": "صالة"}}],
    }
    assert Benefits.from_json(benefits.to_json()) == benefits
    assert Benefits.from_json({}) == Benefits()
    assert Benefits.from_json({"bonus_points": "7", "custom_perks": [{"code": 1, "label": {"en": 2}}]}) == Benefits(
        bonus_points=7, custom_perks=(Perk("1", {"en": "2"}),)
    )


@pytest.mark.parametrize(
    ("tag", "ok"),
    [
        ("", True),
        ("en-Latn-US-abcdefgh-abcdefgh-abcdef", True),  # 35 characters: the cap
        ("en-Latn-US-abcdefgh-abcdefgh-abcdefg", False),  # 36
    ],
)
def test_requested_locale_is_at_most_35_characters(tag: str, ok: bool) -> None:
    assert len(tag) in (0, 35, 36)
    if ok:
        assert check_requested(tag, "locale") == tag
    else:
        with pytest.raises(InvalidArgument) as raised:
            check_requested(tag, "locale")
        assert raised.value.violations[0].field == "locale"


@pytest.mark.parametrize("char", ["\ue000", "\U000f0000", "\U00100000"])
def test_private_use_characters_are_refused(char: str) -> None:
    [violation] = text_violations(f"Gold{char}", "en", "tier.name", 100)
    assert violation.field == "tier.name"
    assert violation.description == "must not contain control, unassigned or private-use characters"


def test_text_problems_are_each_reported() -> None:
    def problems(value: str, locale: str = "en", max_chars: int = 100) -> list[str]:
        return [v.description for v in text_violations(value, locale, "f", max_chars)]

    assert problems("x" * 5, max_chars=5) == []
    assert problems("x" * 6, max_chars=5) == ["must be at most 5 characters"]
    assert problems("\u202eGold ") == [
        "must not contain bidirectional override or isolate characters",
        "must not start or end with whitespace",
    ]
    assert problems("Gold\x00\u202a") == [
        "must not contain bidirectional override or isolate characters",
        "must not contain control, unassigned or private-use characters",
    ]
    assert problems("Gold") == problems("זהב", "he") == problems("ذهبي", "ar") == []
    assert problems("Gold", "he") == ["must contain at least one Hebrew letter for locale he"]
    assert problems("Gold ١٢", "ar") == ["must contain at least one Arabic letter for locale ar"]  # digits only
    assert problems("\u2069") == [
        "must not contain bidirectional override or isolate characters",
        "must contain at least one Latin letter for locale en",  # CLDR's script of en (issue 16)
    ]
    assert problems("\u2066x") == ["must not contain bidirectional override or isolate characters"]
    assert problems("\u202ax") == ["must not contain bidirectional override or isolate characters"]
    assert problems("x\u202fx") == []  # NARROW NO-BREAK SPACE inside: a space, not a control
    assert problems("\u206ax") == []  # deprecated format character outside the isolates
    assert problems("\ufb50", "ar") == []  # Arabic presentation forms: first
    assert problems("\ufefc", "ar") == []  # and last letters
    assert problems("\ufb1d", "he") == ["must be in Unicode normalisation form NFC"]  # a Hebrew letter, not NFC
    assert problems("\ufb4f", "he") == []  # U+FB4F, the last Hebrew presentation form


@pytest.mark.parametrize(
    ("subject", "ok"),
    [("a" * MAX_SUBJECT_CHARS, True), ("a" * (MAX_SUBJECT_CHARS + 1), False), ("", False), ("a\nb", False)],
)
def test_token_subject_is_1_to_256_printable_characters(subject: str, ok: bool) -> None:
    assert MAX_SUBJECT_CHARS == 256
    if ok:
        assert make_principal(subject, None, [], 0.0).subject == subject
    else:
        with pytest.raises(Unauthenticated, match="invalid token"):
            make_principal(subject, None, [], 0.0)


def _tier(spec: TierSpec) -> VIPTier:
    now = datetime.now(UTC)
    return VIPTier(uuid.uuid4(), uuid.uuid4(), "t", spec, 1, now, now)


def test_perk_label_falls_back_to_the_tiers_own_default_locale() -> None:
    tier = _tier(
        TierSpec(name="זהב", locale="he", benefits=Benefits(custom_perks=(Perk("p", {"ar": "صالة", "he": "טרקלין"}),)))
    )
    display = tier.display("fr")
    assert (display.locale, display.name) == ("he", "זהב")
    [perk] = display.perks
    assert (perk.code, perk.label, perk.locale) == ("p", "טרקלין", "he")
    [arabic] = tier.display("ar-EG").perks
    assert (arabic.label, arabic.locale) == ("صالة", "ar")


def test_a_tag_with_script_and_region_resolves_by_its_language() -> None:
    assert display_key("ar-Arab-EG") == "ar-EG"  # a CLDR locale of its own: it keys the cache
    assert display_key("HE-Hebr-IL") == "he-IL"
    assert resolve("ar-Arab-EG", "en", {"en": "Gold", "ar": "ذهبي"}) == ("ar", "ذهبي")
    assert resolve("He-Hebr", "en", {"en": "Gold", "he": "זהב"}) == ("he", "זהב")


def test_nothing_to_display_answers_the_default_locale_and_no_text() -> None:
    assert resolve("ar", "he", {}) == ("he", "")
