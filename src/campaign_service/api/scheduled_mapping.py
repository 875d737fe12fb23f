"""Conversions for scheduled (effective-dated) changes (kept apart from mapping.py; covered by
tests/e2e/test_scheduled_api.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from campaign_service.api.mapping import tier_to_proto
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.api.progression_mapping import programme_to_proto
from campaign_service.domain.tiers import VIPTier
from campaign_service.service.progression_api_ports import StoredProgramme
from campaign_service.service.scheduled_ports import ScheduledChange


def optional_time(message: object, field: str) -> datetime | None:
    """The Timestamp field as an aware datetime, None when unset."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value: Timestamp = getattr(message, field)
    return value.ToDatetime(tzinfo=UTC)


def change_to_proto(c: ScheduledChange) -> pb.ScheduledChange:
    msg = pb.ScheduledChange(
        change_id=str(c.change_id),
        merchant_id=str(c.merchant_id),
        kind=c.kind,
        tier_id=c.tier.tier_id if c.tier is not None else "",
        state=c.state,
        mode=c.mode or "",
        created_by=c.created_by,
        config_version=c.config_version or 0,
        error=c.error or "",
    )
    msg.effective_at.FromDatetime(c.effective_at)
    if c.tier is not None:
        if c.tier.spec is not None:
            tier = VIPTier(
                c.tier.new_id or c.change_id,
                c.merchant_id,
                c.tier.tier_id,
                c.tier.spec,
                0,
                c.effective_at,
                c.effective_at,
            )
            msg.tier.CopyFrom(tier_to_proto(tier, ""))
            msg.tier.ClearField("id")
            msg.tier.ClearField("version")
        if c.kind == "tier_update":
            msg.update_mask.paths.extend(sorted(c.tier.mask))
    if c.program is not None:
        msg.program.CopyFrom(programme_to_proto(c.merchant_id, StoredProgramme(c.program, None)))
        msg.program.ClearField("version")
        msg.update_mask.paths.extend(c.program_mask)
    if c.created_at is not None:
        msg.created_at.FromDatetime(c.created_at)
    if c.finished_at is not None:
        msg.finished_at.FromDatetime(c.finished_at)
    return msg
