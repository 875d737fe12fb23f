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

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args
from uuid import UUID

ApplyMode = Literal["upgrades_only", "full", "next_period"]
APPLY_MODES: tuple[ApplyMode, ...] = get_args(ApplyMode)
DEFAULT_APPLY_MODE: ApplyMode = "upgrades_only"

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
