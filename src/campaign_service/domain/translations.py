"""The translation-completeness report: for each locale a merchant serves, which tier names and
perk labels are missing in it (a reader of it falls back), and the fraction present.

A text identical to the tier's default-language text in a locale written in another script
counts as missing (a copied "Gold" in `ar` is not a translation); scripts that share letters (Han
in `zh`, `zh-Hant` and `ja`) are not "another script" for this."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from campaign_service.domain.locales import direction, resolve, script_of
from campaign_service.domain.text import SCRIPT_LETTERS
from campaign_service.domain.tiers import VIPTier


@dataclass(frozen=True)
class Gap:
    """A tier's name (perk_code "") or one perk's label that has no text in the locale."""

    tier_id: str
    perk_code: str
    fallback_locale: str  # what a reader of the locale gets instead
    copied: bool  # text is there, but a copy of the default-language text in another script


@dataclass(frozen=True)
class LocaleCompleteness:
    locale: str
    direction: str
    total: int  # tier names plus perk labels
    present: int
    gaps: tuple[Gap, ...]

    @property
    def fraction(self) -> float:
        return self.present / self.total if self.total else 1.0


def _other_writing(locale: str, original_locale: str) -> bool:
    """Whether the two locales are written in different scripts, by the letters they use: `ja`
    (Jpan), `zh-Hant` and `zh` (Hans) all write Han, so the same Han name in two of them may well
    be a translation; `ar` and `en` share no letters."""
    a, b = script_of(locale), script_of(original_locale)
    if a == b:
        return False
    letters_a, letters_b = SCRIPT_LETTERS.get(a or ""), SCRIPT_LETTERS.get(b or "")
    if letters_a is None or letters_b is None:
        return True
    return not set(letters_a[1]) & set(letters_b[1])


def _is_copy(text: str, locale: str, original: str | None, original_locale: str) -> bool:
    return (
        original is not None
        and locale != original_locale
        and text == original
        and _other_writing(locale, original_locale)
    )


def _check(available: Mapping[str, str], locale: str, default: str, original: str | None) -> tuple[bool, str, bool]:
    """(present, fallback locale if not, copied) of one text in one locale."""
    text = available.get(locale)
    copied = text is not None and _is_copy(text, locale, original, default)
    if text and not copied:
        return True, locale, False
    rest = {k: v for k, v in available.items() if k != locale}
    fallback, _ = resolve(locale, default, rest)
    return False, fallback, copied


def report(tiers: Sequence[VIPTier], enabled: Sequence[str]) -> list[LocaleCompleteness]:
    """Completeness of every enabled locale over `tiers`, in the order of `enabled`."""
    out = []
    for locale in enabled:
        total = present = 0
        gaps: list[Gap] = []
        for tier in tiers:
            spec = tier.spec
            names = {spec.locale: spec.name, **spec.translations}
            texts: list[tuple[str, Mapping[str, str], str | None]] = [("", names, spec.name)]
            texts += [(p.code, p.label, p.label.get(spec.locale)) for p in spec.benefits.custom_perks]
            for code, available, original in texts:
                total += 1
                ok, fallback, copied = _check(available, locale, spec.locale, original)
                if ok:
                    present += 1
                else:
                    gaps.append(Gap(tier.tier_id, code, fallback, copied))
        out.append(LocaleCompleteness(locale, direction(locale), total, present, tuple(gaps)))
    return out
