"""Cached answers are keyed by display_key(locale): it must resolve exactly like the requested tag."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from campaign_service.domain.benefits import Benefits, Perk
from campaign_service.domain.locales import SUPPORTED_LOCALES, display_key
from campaign_service.domain.tiers import TierSpec, VIPTier

locales = st.sampled_from(SUPPORTED_LOCALES)
texts = st.dictionaries(locales, st.sampled_from(["a", "b", "c"]), min_size=1)
requested = st.one_of(
    st.just(""),
    st.builds(
        "{}{}".format,
        st.sampled_from(["en", "ar", "he", "EN", "Ar", "fr", "de", "zh", "heb"]),
        st.sampled_from(["", "-US", "-SA", "-IL", "-Latn", "-419", "-Arab-EG"]),
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


def test_display_key_has_few_values() -> None:
    assert {display_key(t) for t in ["", "en", "en-GB", "EN", "ar-SA", "he", "fr", "zh-Hant-TW"]} == {
        "",
        "en",
        "ar",
        "he",
    }
