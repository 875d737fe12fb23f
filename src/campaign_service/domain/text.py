"""Rules for human-readable text (tier names, perk labels) in any supported locale."""

from __future__ import annotations

import unicodedata

from campaign_service.domain.errors import FieldViolation

_BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
# Letters that prove a text is written in the script of its locale.
_SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "ar": ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
    "he": ((0x0590, 0x05FF), (0xFB1D, 0xFB4F)),
}
_SCRIPT_NAMES = {"ar": "Arabic", "he": "Hebrew"}


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
        ranges = _SCRIPT_RANGES.get(locale)
        if ranges and not any(
            lo <= ord(ch) <= hi and unicodedata.category(ch).startswith("L") for ch in value for lo, hi in ranges
        ):
            problems.append(f"must contain at least one {_SCRIPT_NAMES[locale]} letter for locale {locale}")
    return [FieldViolation(field_path, p) for p in problems]
