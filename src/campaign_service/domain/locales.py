"""Supported locales and the fallback chain for display text."""

from __future__ import annotations

import re
from collections.abc import Mapping

from campaign_service.domain.errors import invalid

# The allow-list of locales tier text may be stored in. The SQL function
# `campaign_locale_supported` in the migrations holds the same list.
SUPPORTED_LOCALES: tuple[str, ...] = ("en", "ar", "he")
FALLBACK_LOCALE = "en"

# BCP 47 language tag, simplified: language, optional script, region and variants.
_BCP47 = re.compile(
    r"^[A-Za-z]{2,3}(?:-[A-Za-z]{4})?(?:-(?:[A-Za-z]{2}|[0-9]{3}))?(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*$"
)


def check_supported(tag: str, field_path: str) -> str:
    """A locale text is stored in: exactly one of SUPPORTED_LOCALES."""
    if tag not in SUPPORTED_LOCALES:
        raise invalid(field_path, f"unsupported locale {tag[:16]!r}; use one of {', '.join(SUPPORTED_LOCALES)}")
    return tag


def check_requested(tag: str, field_path: str) -> str:
    """A locale a reader asks for: any well-formed BCP 47 tag, or empty for the tier's default."""
    if tag and (len(tag) > 35 or not _BCP47.fullmatch(tag)):
        raise invalid(field_path, "not a well-formed BCP 47 language tag")
    return tag


def resolve(requested: str, default: str, available: Mapping[str, str]) -> tuple[str, str]:
    """Picks (locale, text) from `available` by requested tag -> its language -> default -> en.

    Falls back to any available text (in SUPPORTED_LOCALES order) so the caller always gets one.
    """
    candidates: list[str] = []
    if requested:
        candidates.append(requested)
        language = requested.split("-", 1)[0].lower()
        candidates.append(language)
    candidates += [default, FALLBACK_LOCALE, *SUPPORTED_LOCALES]
    for tag in candidates:
        text = available.get(tag)
        if text:
            return tag, text
    for tag, text in available.items():
        return tag, text
    return default, ""


def display_key(requested: str) -> str:
    """The shortest tag that resolves exactly like `requested` for every tier: stored text only
    exists in SUPPORTED_LOCALES, so only the tag itself or its language can match before the
    tier's default; any other tag behaves like no tag. Cached answers are keyed by this."""
    if requested in SUPPORTED_LOCALES:
        return requested
    language = requested.split("-", 1)[0].lower()
    return language if language in SUPPORTED_LOCALES else ""
