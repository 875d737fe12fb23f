"""Rules for human-readable text (tier names, perk labels) in any supported locale."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from campaign_service.domain.errors import FieldViolation
from campaign_service.domain.locales import script_of

_BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
_HAN = ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")
# What the Unicode character names of a script's letters start with, by ISO 15924 code (CLDR's
# script of a locale). A script not listed here uses its code's English name from this table's
# second column only when given; unknown scripts are not checked (no locale CLDR has uses one:
# tests/unit/test_locales.py checks every CLDR locale's script is here).
SCRIPT_LETTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Latn": ("Latin", ("LATIN",)),
    "Arab": ("Arabic", ("ARABIC",)),
    "Hebr": ("Hebrew", ("HEBREW",)),
    "Cyrl": ("Cyrillic", ("CYRILLIC",)),
    "Grek": ("Greek", ("GREEK",)),
    "Armn": ("Armenian", ("ARMENIAN",)),
    "Geor": ("Georgian", ("GEORGIAN",)),
    "Deva": ("Devanagari", ("DEVANAGARI",)),
    "Beng": ("Bangla", ("BENGALI",)),
    "Guru": ("Gurmukhi", ("GURMUKHI",)),
    "Gujr": ("Gujarati", ("GUJARATI",)),
    "Orya": ("Odia", ("ORIYA",)),
    "Taml": ("Tamil", ("TAMIL",)),
    "Telu": ("Telugu", ("TELUGU",)),
    "Knda": ("Kannada", ("KANNADA",)),
    "Mlym": ("Malayalam", ("MALAYALAM",)),
    "Sinh": ("Sinhala", ("SINHALA",)),
    "Thai": ("Thai", ("THAI",)),
    "Laoo": ("Lao", ("LAO",)),
    "Khmr": ("Khmer", ("KHMER",)),
    "Mymr": ("Myanmar", ("MYANMAR",)),
    "Tibt": ("Tibetan", ("TIBETAN",)),
    "Ethi": ("Ethiopic", ("ETHIOPIC",)),
    "Thaa": ("Thaana", ("THAANA",)),
    "Syrc": ("Syriac", ("SYRIAC",)),
    "Mong": ("Mongolian", ("MONGOLIAN",)),
    "Tfng": ("Tifinagh", ("TIFINAGH",)),
    "Cans": ("Canadian Aboriginal Syllabics", ("CANADIAN SYLLABICS",)),
    "Cher": ("Cherokee", ("CHEROKEE",)),
    "Nkoo": ("N’Ko", ("NKO",)),
    "Vaii": ("Vai", ("VAI",)),
    "Adlm": ("Adlam", ("ADLAM",)),
    "Rohg": ("Hanifi Rohingya", ("HANIFI ROHINGYA",)),
    "Olck": ("Ol Chiki", ("OL CHIKI",)),
    "Cakm": ("Chakma", ("CHAKMA",)),
    "Mtei": ("Meitei Mayek", ("MEETEI MAYEK",)),
    "Hmnp": ("Nyiakeng Puachue Hmong", ("NYIAKENG PUACHUE HMONG",)),
    "Yiii": ("Yi", ("YI SYLLABLE",)),
    "Tavt": ("Tai Viet", ("TAI VIET",)),
    "Copt": ("Coptic", ("COPTIC",)),
    "Shaw": ("Shavian", ("SHAVIAN",)),
    "Dsrt": ("Deseret", ("DESERET",)),
    "Osge": ("Osage", ("OSAGE",)),
    "Sunu": ("Sunuwar", ("SUNUWAR",)),
    "Hans": ("Han", _HAN),
    "Hant": ("Han", _HAN),
    "Hani": ("Han", _HAN),
    "Jpan": ("Japanese", (*_HAN, "HIRAGANA", "KATAKANA")),
    "Kore": ("Korean", (*_HAN, "HANGUL")),
}


@lru_cache(maxsize=65536)
def _letter_of(ch: str, prefixes: tuple[str, ...]) -> bool:
    return unicodedata.category(ch).startswith("L") and unicodedata.name(ch, "").startswith(prefixes)


def script_letter_missing(value: str, locale: str) -> str | None:
    """Why `value` does not look written in `locale`'s script (None: it holds one of its letters)."""
    script = script_of(locale)
    known = SCRIPT_LETTERS.get(script or "")
    if known is None:
        return None
    name, prefixes = known
    if any(_letter_of(ch, prefixes) for ch in value):
        return None
    return f"must contain at least one {name} letter for locale {locale}"


def text_violations(value: str, locale: str, field_path: str, max_chars: int) -> list[FieldViolation]:
    """Every reason `value` is not acceptable display text in `locale` (empty list: fine)."""
    problems: list[str] = []
    if not value.strip():
        problems.append("must not be blank")
    elif len(value) > max_chars:
        problems.append(f"must be at most {max_chars} characters")
    else:
        if any(ch in _BIDI_CONTROLS for ch in value):
            problems.append("must not contain bidirectional override or isolate characters")
        if any(unicodedata.category(ch) in ("Cc", "Cs", "Cn", "Co") for ch in value):
            problems.append("must not contain control, unassigned or private-use characters")
        elif unicodedata.normalize("NFC", value) != value:
            problems.append("must be in Unicode normalisation form NFC")
        if value != value.strip():
            problems.append("must not start or end with whitespace")
        missing = script_letter_missing(value, locale)
        if missing:
            problems.append(missing)
    return [FieldViolation(field_path, p) for p in problems]


def script_writable(locale: str) -> bool:
    """Whether this Python's Unicode data has any letter of `locale`'s script (Sunuwar, new in
    Unicode 16, has none in Python 3.11's Unicode 14: no name in it could pass the checks)."""
    return _has_letters(script_of(locale) or "")


@lru_cache(maxsize=64)
def _has_letters(script: str) -> bool:
    known = SCRIPT_LETTERS.get(script)
    if known is None:
        return True
    prefixes = known[1]
    return any(
        unicodedata.category(chr(c)).startswith("L") and unicodedata.name(chr(c), "").startswith(prefixes)
        for c in range(0x20000)
    )
