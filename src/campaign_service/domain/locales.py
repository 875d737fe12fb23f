"""Locales: which ones CLDR knows (Babel's data), the fallback chain for display text, a
locale's script and text direction, and numbers rendered the way a locale writes them.

A merchant stores text only in the locales it has enabled (`MerchantLocales`); a locale can be
enabled when CLDR has data for it under its canonical tag (`en`, `en-GB`, `zh-Hant-TW`,
`sr-Latn-RS`). Readers may ask for any well-formed BCP 47 tag: it falls back along
`fallback_chain` (CLDR's parent locales: a region drops, then a script the language is not
usually written in ends the chain), then the tier's default locale, then `en`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from babel import Locale, localedata, numbers
from babel.core import UnknownLocaleError, get_global

from campaign_service.domain.errors import FieldViolation, invalid

# What a merchant has enabled until it chooses otherwise (migration 0040 holds the same list).
DEFAULT_LOCALES: tuple[str, ...] = ("en", "ar", "he")
FALLBACK_LOCALE = "en"
MAX_LOCALES = 50
LTR, RTL = "ltr", "rtl"

# BCP 47 language tag, simplified: language, optional script, region and variants.
_BCP47 = re.compile(
    r"^[A-Za-z]{2,3}(?:-[A-Za-z]{4})?(?:-(?:[A-Za-z]{2}|[0-9]{3}))?(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*$"
)
# The CLDR locales text may be stored in: language, optional script, optional region (no variants).
_STORABLE = re.compile(r"^[a-z]{2,3}(?:-[A-Z][a-z]{3})?(?:-(?:[A-Z]{2}|[0-9]{3}))?$")
# Every locale CLDR has data for, as BCP 47 tags (`zh-Hant-TW`).
CLDR_LOCALES: frozenset[str] = frozenset(i.replace("_", "-") for i in localedata.locale_identifiers())
_LIKELY: Mapping[str, str] = get_global("likely_subtags")
_PARENTS: Mapping[str, str] = get_global("parent_exceptions")
# Unicode digit zero of the CLDR numbering systems locales default to (the digits follow it).
_ZERO_DIGIT = {
    "arab": "\u0660",
    "arabext": "\u06f0",
    "beng": "\u09e6",
    "deva": "\u0966",
    "mymr": "\u1040",
    "tibt": "\u0f20",
    "olck": "\u1c50",
    "mtei": "\uabf0",
    "cakm": "\U00011136",
    "nkoo": "\u07c0",
    "adlm": "\U0001e950",
    "hmnp": "\U0001e140",
}


@dataclass(frozen=True)
class MerchantLocales:
    """The locales a merchant stores text in (its first is not special; tiers name their own
    default). `version` moves on every change; 0 means never changed (the default set)."""

    locales: tuple[str, ...] = DEFAULT_LOCALES
    version: int = 0
    updated_at: datetime | None = None


def check_requested(tag: str, field_path: str) -> str:
    """A locale a reader asks for: any well-formed BCP 47 tag, or empty for the tier's default."""
    if tag and (len(tag) > 35 or not _BCP47.fullmatch(tag)):
        raise invalid(field_path, "not a well-formed BCP 47 language tag")
    return tag


def cldr_violation(tag: str) -> str | None:
    """Why `tag` cannot be enabled (None: a canonical CLDR locale)."""
    if len(tag) > 35 or not _BCP47.fullmatch(tag):
        return "not a well-formed BCP 47 language tag"
    if tag in CLDR_LOCALES:
        return None if _STORABLE.fullmatch(tag) else "locales with a variant subtag are not supported"
    canonical = _canonical(tag)
    if canonical and canonical != tag:
        return f"unknown locale {tag[:16]!r}; CLDR calls it {canonical!r}"
    return f"unknown locale {tag[:16]!r}: CLDR has no data for it"


def _canonical(tag: str) -> str | None:
    loc = _babel_locale(tag)
    language, script, region = _split(tag)
    subtags = len([p for p in (language, script, region) if p])
    if loc is None or subtags != tag.count("-") + 1 or (loc.language, loc.territory) != (language, region):
        return None  # Babel fell back to another locale: no hint
    canonical = "-".join(p for p in (loc.language, loc.script, loc.territory) if p)
    return canonical if canonical in CLDR_LOCALES else None


def locales_violations(tags: Iterable[str], field_path: str) -> list[FieldViolation]:
    """Every reason `tags` cannot be a merchant's set of locales."""
    tags = list(tags)
    out: list[FieldViolation] = []
    if not tags:
        out.append(FieldViolation(field_path, "must list at least one locale"))
    if len(tags) > MAX_LOCALES:
        out.append(FieldViolation(field_path, f"must list at most {MAX_LOCALES} locales"))
        return out
    seen: set[str] = set()
    for i, tag in enumerate(tags):
        problem = cldr_violation(tag)
        if problem is None and tag in seen:
            problem = f"duplicate locale {tag!r}"
        if problem is not None:
            out.append(FieldViolation(f"{field_path}[{i}]", problem))
        seen.add(tag)
    return out


def enabled_violation(tag: str, enabled: Iterable[str]) -> str | None:
    """Why text cannot be stored in `tag` for a merchant with `enabled` locales (None: it can)."""
    enabled = tuple(enabled)
    if tag in enabled:
        return None
    problem = cldr_violation(tag)
    if problem is not None:
        return problem
    return f"locale {tag!r} is not enabled for this merchant; enabled: {', '.join(enabled)}"


def _split(tag: str) -> tuple[str, str | None, str | None]:
    """(language, script, region) of a well-formed tag, case-normalised; variants dropped."""
    parts = tag.split("-")
    language, script, region = parts[0].lower(), None, None
    for part in parts[1:]:
        if len(part) == 4 and part.isalpha() and script is None and region is None:
            script = part.title()
        elif (len(part) == 2 and part.isalpha()) or (len(part) == 3 and part.isdigit()):
            if region is None:
                region = part.upper()
        else:
            break  # a variant: everything after it is more specific still
    return language, script, region


def _likely_script(language: str, region: str | None = None) -> str | None:
    for key in ([f"{language}_{region}"] if region else []) + [language]:
        likely = _LIKELY.get(key)
        if likely:
            parts = likely.split("_")
            if len(parts) > 1 and len(parts[1]) == 4:
                return parts[1]
    return None


@lru_cache(maxsize=4096)
def fallback_chain(requested: str) -> tuple[str, ...]:
    """The tags whose text suits a reader of `requested`, best first, as CLDR's parent locales
    go: `zh-TW` -> zh-Hant-TW, zh-TW, zh-Hant (not `zh`: that is Simplified Chinese);
    `sr-Latn-RS` -> sr-Latn-RS, sr-Latn (not `sr`: Cyrillic); `ar-EG` -> ar-Arab-EG, ar-EG,
    ar-Arab, ar; `en-AU` -> ..., en-AU, en-001, ..., en. Empty for an empty tag."""
    if not requested:
        return ()
    language, script, region = _split(requested)
    usual = _likely_script(language)
    script = script or _likely_script(language, region) or usual
    chain: list[str] = []
    if region:
        chain.append("-".join(p for p in (language, script, region) if p))
        if script == _likely_script(language, region):
            chain.append(f"{language}-{region}")
        for tag in list(chain):
            parent = _PARENTS.get(tag.replace("-", "_"))
            if parent and parent != "root":
                chain.append(parent.replace("_", "-"))
    if script:
        chain.append(f"{language}-{script}")
    if script is None or script == usual:
        chain.append(language)
    return tuple(dict.fromkeys(chain))


@lru_cache(maxsize=4096)
def display_key(requested: str) -> str:
    """The shortest tag that resolves exactly like `requested` for every tier: stored text only
    exists in CLDR locales, so the first CLDR locale of its fallback chain (whose own chain is the
    rest of it) stands for it; a tag with none behaves like no tag. Cached answers are keyed by
    this, so their number is bounded by CLDR's locales, not by what readers send."""
    return next((tag for tag in fallback_chain(requested) if tag in CLDR_LOCALES), "")


def resolve(requested: str, default: str, available: Mapping[str, str]) -> tuple[str, str]:
    """Picks (locale, text) from `available` by the requested tag's fallback chain -> default
    -> en; else any available text (in its stored order), so the caller always gets one."""
    for tag in (*fallback_chain(requested), default, FALLBACK_LOCALE):
        text = available.get(tag)
        if text:
            return tag, text
    for tag, text in available.items():
        return tag, text
    return default, ""


@lru_cache(maxsize=2048)
def script_of(tag: str) -> str | None:
    """The ISO 15924 script CLDR writes `tag` in (explicit, else its likely script)."""
    language, script, region = _split(tag)
    return script or _likely_script(language, region)


@lru_cache(maxsize=2048)
def direction(tag: str) -> str:
    """`ltr` or `rtl`: how text in `tag` runs (CLDR's character order)."""
    loc = _babel_locale(tag)
    return RTL if loc is not None and loc.text_direction == "rtl" else LTR


@lru_cache(maxsize=2048)
def _babel_locale(tag: str) -> Locale | None:
    try:
        return Locale.parse(tag, sep="-")
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def _native_digits(text: str, loc: Locale) -> str:
    zero = _ZERO_DIGIT.get(loc.default_numbering_system)
    if zero is None:
        return text
    return text.translate({ord("0") + d: chr(ord(zero) + d) for d in range(10)})


@lru_cache(maxsize=4096)  # a list render formats each tier's numbers; merchants reuse few values
def format_integer(value: int, tag: str) -> str:
    """`value` as the locale writes it: grouping and digits of its default numbering system
    (e.g. `١٬٢٣٤` in ar-EG, `1,234` in en, `12,34,567` in hi)."""
    loc = _babel_locale(tag)
    if loc is None:
        return str(value)
    return _native_digits(numbers.format_decimal(value, locale=loc, numbering_system="default"), loc)


@lru_cache(maxsize=1024)
def format_percent(percent: int, tag: str) -> str:
    """A whole percentage as the locale writes it (e.g. `15%`, `١٥٪؜` in ar-EG, `15 %` in fr)."""
    loc = _babel_locale(tag)
    if loc is None:
        return f"{percent}%"
    return _native_digits(numbers.format_percent(percent / 100, locale=loc, numbering_system="default"), loc)


def describe(tag: str) -> dict[str, str]:
    """What CLDR says of a stored locale: direction, script, English and native names."""
    loc = _babel_locale(tag)
    return {
        "locale": tag,
        "direction": direction(tag),
        "script": script_of(tag) or "",
        "english_name": (loc.get_display_name("en") or "") if loc else "",
        "native_name": (loc.get_display_name() or "") if loc else "",
    }
