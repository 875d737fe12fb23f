"""Scheduled (effective-dated) tier edits: what one does to a merchant's tiers, as a pure function.

The same function answers a read after a change's time that the activator has not applied yet
(the reads overlay it) and computes what the activator writes, so the two cannot disagree: the
tiers a read shows at `effective_at` are the rows the activation leaves (same ids, versions,
`updated_at` = `effective_at`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal
from uuid import UUID

from campaign_service.domain.errors import FieldViolation, InvalidArgument, invalid
from campaign_service.domain.tiers import MAX_TIERS_PER_MERCHANT, TierSpec, VIPTier, check_spec

ChangeKind = Literal["tier_create", "tier_update", "tier_delete", "program_update"]
ChangeState = Literal["pending", "applied", "cancelled", "failed"]
PROGRAM_TARGET = "_program"
# Fields whose change can move customers (a re-assessment job follows the activation).
QUALIFYING_TIER_FIELDS = frozenset({"min_points"})


@dataclass(frozen=True)
class TierEdit:
    """A tier create (spec, the id the tier will have), update (values + mask) or delete."""

    kind: ChangeKind
    tier_id: str
    spec: TierSpec | None = None
    mask: frozenset[str] = frozenset()
    new_id: UUID | None = None


def sorted_tiers(tiers: Iterable[VIPTier]) -> list[VIPTier]:
    return sorted(tiers, key=lambda t: (t.spec.min_points, t.tier_id))


def has_entry_tier(tiers: Sequence[VIPTier]) -> bool:
    """Whether a new customer can get a tier: a default tier, or one that needs no points."""
    return any(t.spec.is_default or t.spec.min_points == 0 for t in tiers)


def apply_tier_edit(
    tiers: Sequence[VIPTier], merchant_id: UUID, edit: TierEdit, at: datetime, *, enabled: tuple[str, ...]
) -> list[VIPTier]:
    """The merchant's tiers after `edit` takes effect at `at`; raises InvalidArgument naming the
    field when it does not fit `tiers` (an unknown tier, a tier that exists already, a value the
    tier rules refuse - text in a locale not among the merchant's `enabled` ones too -, or no tier
    left that a new customer can get)."""
    by_id = {t.tier_id: t for t in tiers}
    if edit.kind == "tier_create":
        new_default = _create(by_id, merchant_id, edit, at, enabled)
    elif edit.kind == "tier_update":
        new_default = _update(by_id, edit, at, enabled)
    elif edit.kind == "tier_delete":
        if by_id.pop(edit.tier_id, None) is None:
            raise invalid("tier_id", f"unknown tier {edit.tier_id!r} at effective_at")
        new_default = None
    else:
        raise ValueError(f"not a tier edit: {edit.kind}")
    if new_default is not None:
        for other in list(by_id.values()):
            if other.tier_id != new_default and other.spec.is_default:
                by_id[other.tier_id] = replace(
                    other, spec=replace(other.spec, is_default=False), version=other.version + 1, updated_at=at
                )
    after = sorted_tiers(by_id.values())
    if has_entry_tier(tiers) and not has_entry_tier(after):
        raise InvalidArgument(
            [
                FieldViolation(
                    _entry_field(edit), "leaves no tier a new customer can get (no default tier, none at 0 points)"
                )
            ]
        )
    return after


def _create(
    by_id: dict[str, VIPTier], merchant_id: UUID, edit: TierEdit, at: datetime, enabled: tuple[str, ...]
) -> str | None:
    assert edit.spec is not None
    assert edit.new_id is not None
    if edit.tier_id in by_id:
        raise invalid("tier.tier_id", f"tier {edit.tier_id!r} exists at effective_at")
    if len(by_id) >= MAX_TIERS_PER_MERCHANT:
        raise invalid("tier.tier_id", f"a merchant may have at most {MAX_TIERS_PER_MERCHANT} tiers")
    spec = check_spec(edit.spec, enabled=enabled)
    by_id[edit.tier_id] = VIPTier(edit.new_id, merchant_id, edit.tier_id, spec, 1, at, at)
    return edit.tier_id if spec.is_default else None


def _update(by_id: dict[str, VIPTier], edit: TierEdit, at: datetime, enabled: tuple[str, ...]) -> str | None:
    assert edit.spec is not None
    current = by_id.get(edit.tier_id)
    if current is None:
        raise invalid("tier_id", f"unknown tier {edit.tier_id!r} at effective_at")
    spec = check_spec(current.spec.patched(edit.spec, edit.mask), enabled=enabled)
    changed = current.spec.changed_fields(spec)
    if not changed:
        return None
    by_id[edit.tier_id] = replace(current, spec=spec, version=current.version + 1, updated_at=at)
    return edit.tier_id if "is_default" in changed and spec.is_default else None


def _entry_field(edit: TierEdit) -> str:
    if edit.kind == "tier_delete":
        return "tier_id"
    return "tier.is_default" if "is_default" in edit.mask else "tier.min_points"


def changed_tier_ids(before: Sequence[VIPTier], after: Sequence[VIPTier]) -> list[str]:
    """The tiers created, changed or deleted between two configurations."""
    old = {t.tier_id: t for t in before}
    new = {t.tier_id: t for t in after}
    return sorted(i for i in old.keys() | new.keys() if old.get(i) != new.get(i))
