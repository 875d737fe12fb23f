"""Typed tier benefits and the JSON shape they are stored in (`vip_tiers.benefits`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from campaign_service.domain.errors import FieldViolation
from campaign_service.domain.locales import DEFAULT_LOCALES, enabled_violation
from campaign_service.domain.text import text_violations

MAX_BONUS_POINTS = 1_000_000_000
MAX_PERKS = 50
MAX_LABEL_CHARS = 200
MAX_JSON_BYTES = 16 * 1024
_PERK_CODE = re.compile(r"^[a-z0-9_]{1,64}$")


@dataclass(frozen=True)
class Perk:
    code: str
    label: dict[str, str]


@dataclass(frozen=True)
class Benefits:
    bonus_points: int = 0
    custom_perks: tuple[Perk, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "bonus_points": self.bonus_points,
            "custom_perks": [{"code": p.code, "label": dict(p.label)} for p in self.custom_perks],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Benefits:
        """Reads what the database holds (already validated by trg_validate_benefits)."""
        return cls(
            bonus_points=int(data.get("bonus_points", 0)),
            custom_perks=tuple(
                Perk(code=str(p["code"]), label={str(k): str(v) for k, v in p["label"].items()})
                for p in data.get("custom_perks", [])
            ),
        )


def benefits_violations(
    benefits: Benefits, field_path: str, enabled: tuple[str, ...] = DEFAULT_LOCALES
) -> list[FieldViolation]:
    """Every reason `benefits` cannot be stored for a merchant with `enabled` locales."""
    out: list[FieldViolation] = []
    if not 0 <= benefits.bonus_points <= MAX_BONUS_POINTS:
        out.append(FieldViolation(f"{field_path}.bonus_points", f"must be between 0 and {MAX_BONUS_POINTS}"))
    if len(benefits.custom_perks) > MAX_PERKS:
        out.append(FieldViolation(f"{field_path}.custom_perks", f"must have at most {MAX_PERKS} perks"))
        return out
    seen: set[str] = set()
    for i, perk in enumerate(benefits.custom_perks):
        path = f"{field_path}.custom_perks[{i}]"
        if not _PERK_CODE.fullmatch(perk.code):
            out.append(FieldViolation(f"{path}.code", "must be 1-64 characters of a-z, 0-9 and _"))
        elif perk.code in seen:
            out.append(FieldViolation(f"{path}.code", f"duplicate perk code {perk.code!r}"))
        seen.add(perk.code)
        if not perk.label:
            out.append(FieldViolation(f"{path}.label", "must have at least one locale"))
        for locale, text in perk.label.items():
            problem = enabled_violation(locale, enabled)
            if problem:
                out.append(FieldViolation(f"{path}.label", problem))
                continue
            out += text_violations(text, locale, f"{path}.label.{locale}", MAX_LABEL_CHARS)
    if not out:
        size = len(json.dumps(benefits.to_json(), ensure_ascii=False).encode())
        if size > MAX_JSON_BYTES:
            out.append(
                FieldViolation(field_path, f"must encode to at most {MAX_JSON_BYTES} bytes of JSON (got {size})")
            )
    return out
