"""The VIP tier value, its validation, and partial updates by field mask."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from uuid import UUID

from campaign_service.domain.benefits import Benefits, benefits_violations
from campaign_service.domain.errors import FieldViolation, InvalidArgument, invalid
from campaign_service.domain.locales import (
    DEFAULT_LOCALES,
    direction,
    enabled_violation,
    format_integer,
    format_percent,
    resolve,
)
from campaign_service.domain.text import text_violations

MAX_NAME_CHARS = 100
MAX_POINTS = 2_147_483_647  # vip_tiers.min_points is a PostgreSQL integer
MAX_TIERS_PER_MERCHANT = 100
_TIER_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# The fields a caller may set, in the order events list them; `update_mask` paths use these names.
MUTABLE_FIELDS: tuple[str, ...] = (
    "name",
    "locale",
    "min_points",
    "discount_percentage",
    "free_shipping",
    "exclusive_access",
    "benefits",
    "translations",
    "is_default",
)


@dataclass(frozen=True)
class TierSpec:
    """What a caller sets on a tier (create, or the new values of an update)."""

    name: str
    locale: str = "en"
    min_points: int = 0
    discount_percentage: int = 0
    free_shipping: bool = False
    exclusive_access: bool = False
    benefits: Benefits = field(default_factory=Benefits)
    translations: dict[str, str] = field(default_factory=dict)
    is_default: bool = False

    def patched(self, other: TierSpec, paths: frozenset[str]) -> TierSpec:
        return replace(self, **{p: getattr(other, p) for p in paths})

    def changed_fields(self, other: TierSpec) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


@dataclass(frozen=True)
class VIPTier:
    id: UUID
    merchant_id: UUID
    tier_id: str
    spec: TierSpec
    version: int
    created_at: datetime
    updated_at: datetime

    def display(self, requested_locale: str) -> Display:
        names = {self.spec.locale: self.spec.name, **self.spec.translations}
        locale, name = resolve(requested_locale, self.spec.locale, names)
        perks = []
        for perk in self.spec.benefits.custom_perks:
            perk_locale, label = resolve(requested_locale, self.spec.locale, perk.label)
            perks.append(DisplayPerk(perk.code, label, perk_locale, direction(perk_locale)))
        return Display(
            locale=locale,
            name=name,
            perks=tuple(perks),
            direction=direction(locale),
            min_points=format_integer(self.spec.min_points, locale),
            discount=format_percent(self.spec.discount_percentage, locale),
            bonus_points=format_integer(self.spec.benefits.bonus_points, locale),
        )


@dataclass(frozen=True)
class DisplayPerk:
    code: str
    label: str
    locale: str
    direction: str = "ltr"


@dataclass(frozen=True)
class Display:
    locale: str
    name: str
    perks: tuple[DisplayPerk, ...]
    direction: str = "ltr"  # of `locale`: ltr or rtl
    # Numbers written the way `locale` writes them (grouping, digits), for frontends.
    min_points: str = ""
    discount: str = ""
    bonus_points: str = ""


def check_tier_id(tier_id: str, field_path: str = "tier_id") -> str:
    if not _TIER_ID.fullmatch(tier_id):
        raise invalid(field_path, "must be 1-64 characters of a-z, 0-9, _ and -, starting with a letter or digit")
    return tier_id


def spec_violations(
    spec: TierSpec, prefix: str = "tier.", enabled: tuple[str, ...] = DEFAULT_LOCALES
) -> list[FieldViolation]:
    """Every reason `spec` cannot be stored for a merchant with `enabled` locales, with field paths."""
    out: list[FieldViolation] = []
    problem = enabled_violation(spec.locale, enabled)
    if problem:
        out.append(FieldViolation(f"{prefix}locale", problem))
    else:
        out += text_violations(spec.name, spec.locale, f"{prefix}name", MAX_NAME_CHARS)
    if not 0 <= spec.min_points <= MAX_POINTS:
        out.append(FieldViolation(f"{prefix}min_points", f"must be between 0 and {MAX_POINTS}"))
    if not 0 <= spec.discount_percentage <= 100:
        out.append(FieldViolation(f"{prefix}discount_percentage", "must be between 0 and 100"))
    out += benefits_violations(spec.benefits, f"{prefix}benefits", enabled)
    for locale, name in spec.translations.items():
        path = f"{prefix}translations.{locale[:16]}"
        problem = enabled_violation(locale, enabled)
        if problem:
            out.append(FieldViolation(path, problem))
        elif locale == spec.locale:
            out.append(FieldViolation(path, "duplicates the default locale; set `name` instead"))
        else:
            out += text_violations(name, locale, path, MAX_NAME_CHARS)
    return out


def check_spec(spec: TierSpec, prefix: str = "tier.", enabled: tuple[str, ...] = DEFAULT_LOCALES) -> TierSpec:
    violations = spec_violations(spec, prefix, enabled)
    if violations:
        raise InvalidArgument(violations)
    return spec


def check_mask(paths: list[str]) -> frozenset[str]:
    if not paths:
        raise invalid("update_mask", "must list at least one field (or `*`)")
    if paths == ["*"]:
        return frozenset(MUTABLE_FIELDS)
    unknown = [p for p in paths if p not in MUTABLE_FIELDS]
    if unknown:
        raise invalid(
            "update_mask", f"unknown or read-only field {unknown[0][:64]!r}; allowed: {', '.join(MUTABLE_FIELDS)}"
        )
    return frozenset(paths)
