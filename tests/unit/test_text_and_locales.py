"""Pure rules: display text, locale tags and the fallback chain."""

from __future__ import annotations

import unicodedata

import pytest

from campaign_service.domain.errors import InvalidArgument
from campaign_service.domain.locales import DEFAULT_LOCALES, check_requested, enabled_violation, resolve
from campaign_service.domain.text import text_violations


def problems(value: str, locale: str = "en") -> list[str]:
    return [v.description for v in text_violations(value, locale, "name", 100)]


@pytest.mark.parametrize("value", ["Gold", "Gold Plus 2", "ذهبي", "زهب Gold"])
def test_good_names_pass(value: str) -> None:
    locale = "ar" if any("\u0600" <= c <= "\u06ff" for c in value) else "en"
    assert problems(value, locale) == []


def test_hebrew_name_passes_in_he() -> None:
    assert problems("זהב", "he") == []


@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_blank_names_fail(value: str) -> None:
    assert problems(value) == ["must not be blank"]


def test_too_long_name_fails() -> None:
    assert problems("x" * 101) == ["must be at most 100 characters"]
    assert problems("x" * 100) == []


@pytest.mark.parametrize(
    "control", ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
)
def test_bidi_controls_fail(control: str) -> None:
    assert "must not contain bidirectional override or isolate characters" in problems(f"Gold{control}x")


def test_non_nfc_fails() -> None:
    decomposed = unicodedata.normalize("NFD", "Café")
    assert decomposed != "Café"
    assert problems(decomposed) == ["must be in Unicode normalisation form NFC"]
    assert problems("Café") == []


def test_control_and_unassigned_characters_fail() -> None:
    assert "must not contain control, unassigned or private-use characters" in problems("Gold\x00")
    assert "must not contain control, unassigned or private-use characters" in problems("Gold\U000e0fff")


def test_script_of_locale_is_required() -> None:
    assert problems("Gold", "ar") == ["must contain at least one Arabic letter for locale ar"]
    assert problems("Gold", "he") == ["must contain at least one Hebrew letter for locale he"]
    assert problems("ذهبي", "he") == ["must contain at least one Hebrew letter for locale he"]
    # Arabic-Indic digits are in the Arabic block but are not letters
    assert problems("١٢٣", "ar") == ["must contain at least one Arabic letter for locale ar"]


def test_surrounding_whitespace_fails() -> None:
    assert problems(" Gold") == ["must not start or end with whitespace"]


def test_enabled_locales() -> None:
    for tag in ("en", "ar", "he"):
        assert enabled_violation(tag, DEFAULT_LOCALES) is None
    assert enabled_violation("fr", ("fr",)) is None
    for tag in ("fr", "EN", "en-US", "", "x" * 50):
        assert enabled_violation(tag, DEFAULT_LOCALES) is not None


@pytest.mark.parametrize("tag", ["", "ar", "ar-SA", "he-IL", "en-GB", "zh-Hant-TW", "sr-Latn", "es-419"])
def test_well_formed_requested_tags(tag: str) -> None:
    assert check_requested(tag, "locale") == tag


@pytest.mark.parametrize("tag", ["a", "ar_SA", "ar-", "-ar", "toolongtag", "en-US-x", "ar SA", "x" * 40, "ذهبي"])
def test_malformed_requested_tags(tag: str) -> None:
    with pytest.raises(InvalidArgument):
        check_requested(tag, "locale")


NAMES = {"en": "Gold", "ar": "ذهبي", "he": "זהב"}


@pytest.mark.parametrize(
    ("requested", "default", "available", "expected"),
    [
        ("ar", "en", NAMES, "ar"),  # exact tag
        ("ar-SA", "en", NAMES, "ar"),  # tag -> its language
        ("he-IL", "en", NAMES, "he"),
        ("fr-FR", "ar", NAMES, "ar"),  # unsupported -> tier default
        ("fr", "he", {"he": "זהב", "en": "Gold"}, "he"),
        ("ar", "he", {"he": "זהב", "en": "Gold"}, "he"),  # missing translation -> default
        ("ar", "he", {"en": "Gold"}, "en"),  # default missing too -> en
        ("", "ar", NAMES, "ar"),  # nothing requested -> default
        ("", "he", {"ar": "ذهبي"}, "ar"),  # last resort: whatever exists
    ],
)
def test_fallback_chain(requested: str, default: str, available: dict[str, str], expected: str) -> None:
    locale, text = resolve(requested, default, available)
    assert locale == expected
    assert text == available[expected]
