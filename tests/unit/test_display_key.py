"""Cached answers are keyed by display_key(locale): it must resolve exactly like the requested tag."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.locales import CLDR_LOCALES, display_key
from campaign_service.domain.tiers import TierSpec, VIPTier

# Stored text is in CLDR locales only (a merchant enables those); these include near relatives.
locales = st.sampled_from(
    ["en", "ar", "he", "en-GB", "en-001", "ar-EG", "zh-Hant", "zh-Hant-TW", "zh-Hans", "zh", "sr-Latn", "sr", "es-419"]
)
texts = st.dictionaries(locales, st.sampled_from(["a", "b", "c"]), min_size=1)
requested = st.one_of(
    st.just(""),
    st.builds(
        "{}{}".format,
        st.sampled_from(["en", "ar", "he", "EN", "Ar", "fr", "de", "zh", "heb", "sr", "es"]),
        st.sampled_from(["", "-US", "-SA", "-IL", "-Latn", "-419", "-Arab-EG", "-Hant-TW", "-TW", "-Latn-RS", "-AU"]),
    ),
)


@st.composite
def tiers(draw: st.DrawFn) -> VIPTier:
    default = draw(locales)
    translations = {k: v for k, v in draw(texts).items() if k != default}
    perks = tuple(Perk(f"p{i}", label) for i, label in enumerate(draw(st.lists(texts, max_size=3))))
    spec = TierSpec(name="n", locale=default, translations=translations, benefits=Benefits(custom_perks=perks))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return VIPTier(UUID(int=1), UUID(int=2), "gold", spec, 1, now, now)


@given(tiers(), requested)
def test_display_key_resolves_like_the_requested_tag(tier: VIPTier, tag: str) -> None:
    assert tier.display(display_key(tag)) == tier.display(tag)


def test_display_key_is_a_cldr_locale_or_nothing() -> None:
    """So the cached answers per tier are bounded by CLDR's locales, whatever readers send."""
    keys = {display_key(t) for t in ["", "en", "en-GB", "EN", "ar-SA", "he", "fr", "zh-Hant-TW", "qq-QQ", "en-GB-x1"]}
    assert keys == {"", "en", "en-GB", "ar-SA", "he", "fr", "zh-Hant-TW"}
    assert keys - {""} <= CLDR_LOCALES
