"""Conversions between the tier-progression messages and domain values (kept out of mapping.py,
which scripts/mutation covers with tests/unit; these are covered by tests/e2e/test_progression_api.py)."""

from __future__ import annotations

from uuid import UUID

from campaign_service.api.mapping import tier_to_proto
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.progression import Programme
from campaign_service.service.progression_api import HistoryPage, TierStatus
from campaign_service.service.progression_api_ports import StoredProgramme


def programme_from_proto(program: pb.TierProgram) -> Programme:
    """The request's values as a Programme (unvalidated: the use case checks the patched result)."""
    return Programme(
        window=program.window,  # type: ignore[arg-type]  # checked by Programme.violations
        time_zone=program.time_zone,
        window_months=program.rolling_months or None,
        downgrade_policy=program.downgrade_policy,  # type: ignore[arg-type]
        grace_days=program.grace_days,
        reversal_downgrades_now=program.reversal_downgrades_now,
        entry_bonus=program.entry_bonus,  # type: ignore[arg-type]
        downgrade_warning_days=program.downgrade_warning_days,
    )


def programme_to_proto(merchant_id: UUID, stored: StoredProgramme) -> pb.TierProgram:
    p = stored.programme
    msg = pb.TierProgram(
        merchant_id=str(merchant_id),
        window=p.window,
        rolling_months=p.window_months or 0,
        time_zone=p.time_zone,
        downgrade_policy=p.downgrade_policy,
        grace_days=p.grace_days,
        reversal_downgrades_now=p.reversal_downgrades_now,
        entry_bonus=p.entry_bonus,
        downgrade_warning_days=p.downgrade_warning_days,
        version=p.version,
    )
    if stored.updated_at is not None:
        msg.updated_at.FromDatetime(stored.updated_at)
    return msg


def status_to_proto(merchant_id: UUID, customer_id: UUID, s: TierStatus, locale: str) -> pb.CustomerTierStatus:
    msg = pb.CustomerTierStatus(
        merchant_id=str(merchant_id),
        customer_id=str(customer_id),
        tier=tier_to_proto(s.tier, locale),
        window_points=s.window_points,
        points_to_next_tier=s.points_to_next_tier,
        points_to_keep_tier=s.points_to_keep_tier,
        tier_if_deadline_now=tier_to_proto(s.tier_if_deadline_now, locale),
        floor_tier_id=s.floor_tier_id or "",
    )
    msg.since.FromDatetime(s.since)
    if s.next_tier is not None:
        msg.next_tier.CopyFrom(tier_to_proto(s.next_tier, locale))
    if s.deadline is not None:
        msg.deadline.FromDatetime(s.deadline)
    if s.floor_until is not None:
        msg.floor_until.FromDatetime(s.floor_until)
    return msg


def history_to_proto(page: HistoryPage) -> pb.ListCustomerTierHistoryResponse:
    out = pb.ListCustomerTierHistoryResponse(next_page_token=page.next_page_token)
    for r in page.entries:
        entry = out.entries.add(
            from_tier_id=r.from_tier_id or "",
            tier_id=r.tier_id,
            direction=r.direction,
            reason=r.reason,
            program_version=r.program_version,
            qualifying_points=r.qualifying_points,
            cause_event_id=str(r.cause_event_id) if r.cause_event_id else "",
            actor=r.actor,
            source=r.source,
            config_version=r.config_version,
        )
        entry.at.FromDatetime(r.at)
    return out
