"""Applying a change of a merchant's tiers or programme to its customers (issue 14).

A change that affects qualification is applied in one of three modes:
  upgrades_only  (default) every customer is re-assessed now, but only upward moves land: nobody
                 loses a tier they hold before their own deadline (grandfathering); downgrades
                 wait for the deadline scheduler, which applies the new rules then.
  full           every customer is re-assessed now against the new rules, both directions.
  next_period    nobody is moved now: the new rules count from each customer's next deadline
                 (the deadline scheduler applies them). The live upgrade path is not held back:
                 a points event still upgrades at once under the rules in force (an upgrade
                 never takes anything away, and freezing it would need a second ladder).
The re-assessment runs as a background job (tier_change_jobs) whose progress `TierChangeJob` is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args
from uuid import UUID

from campaign_service.domain.errors import invalid

ApplyMode = Literal["upgrades_only", "full", "next_period"]
APPLY_MODES: tuple[ApplyMode, ...] = get_args(ApplyMode)
DEFAULT_APPLY_MODE: ApplyMode = "upgrades_only"


def apply_mode(value: str | None) -> ApplyMode:
    """The apply mode a request names (empty or None: the default, upgrades_only). The one
    check of an apply mode: every use case that takes one (tier and programme writes, scheduled
    changes, previews) calls this or `optional_apply_mode`; INVALID_ARGUMENT names `apply_mode`."""
    for mode in APPLY_MODES:
        if mode == (value or DEFAULT_APPLY_MODE):
            return mode
    raise invalid("apply_mode", f"must be one of {', '.join(APPLY_MODES)}")


def optional_apply_mode(value: str | None) -> ApplyMode | None:
    """As `apply_mode`, but empty or None stays None (a delete without a mode: refused while
    customers hold the tier)."""
    return apply_mode(value) if value else None

JobState = Literal["queued", "running", "done", "failed", "cancelled"]


@dataclass(frozen=True)
class TierChangeJob:
    """A re-assessment job and how far it got."""

    merchant_id: UUID
    job_id: UUID
    change_id: UUID
    mode: ApplyMode
    state: JobState
    config_version: int
    not_before: datetime
    customers_total: int
    customers_done: int
    moved: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class ChunkResult:
    """One chunk of a job: job None when the job was not runnable or another runner held it."""

    job: TierChangeJob | None
    claimed: int = 0
    moved: int = 0
    up: int = 0
    finished: bool = False


@dataclass
class Cell:
    from_tier: str
    to_tier: str
    direction: str | None  # None: unchanged
    customers: int = 0
    bonus_points: int = 0
    samples: list[UUID] = field(default_factory=list)


@dataclass
class Matrix:
    """A preview: per (from, to) cell the customers, their bonus points and up to N samples."""

    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    customers: int = 0

    def add(self, row: Mapping[str, Any], samples: int) -> None:
        key = (row["from_tier"], row["to_tier"])
        cell = self.cells.setdefault(key, Cell(key[0], key[1], row["dir"]))
        cell.customers += int(row["n"])
        cell.bonus_points += int(row["bonus"] or 0)
        cell.samples = sorted(cell.samples + list(row["samples"] or []))[:samples]

    def merge(self, other: Matrix, samples: int) -> None:
        self.customers += other.customers
        for key, c in other.cells.items():
            cell = self.cells.setdefault(key, Cell(c.from_tier, c.to_tier, c.direction))
            cell.customers += c.customers
            cell.bonus_points += c.bonus_points
            cell.samples = sorted(cell.samples + c.samples)[:samples]

    def moved(self, direction: str | None = None) -> int:
        return sum(
            c.customers
            for c in self.cells.values()
            if c.direction is not None and (direction is None or c.direction == direction)
        )
