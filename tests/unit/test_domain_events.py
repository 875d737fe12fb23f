"""The payloads of the events we announce: the shapes the Avro schemas in avro/ describe."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

from campaign_service import topics
from campaign_service.domain import events

AVRO = Path(events.__file__).resolve().parents[1] / "avro"
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678_999, tzinfo=UTC)
WHEN_MS = 1_767_323_045_678  # milliseconds, truncated


def avro_fields(name: str) -> list[str]:
    return [f["name"] for f in json.loads((AVRO / name).read_text())["fields"]]


def test_tier_updated() -> None:
    event_id, merchant = uuid.uuid4(), uuid.uuid4()
    message = events.tier_updated(
        event_id=event_id,
        merchant_id=merchant,
        tier_id="gold",
        updated_fields=["name", "is_default"],
        updated_at=WHEN,
        actor="alice",
        correlation_id="corr-1",
    )
    assert message == events.OutboxMessage(
        event_id=event_id,
        merchant_id=merchant,
        topic=topics.VIP_TIER_UPDATED,
        key=f"{merchant}:gold",
        payload={
            "event_id": str(event_id),
            "merchant_id": str(merchant),
            "tier_id": "gold",
            "updated_fields": ["name", "is_default"],
            "updated_at": WHEN_MS,
            "actor": "alice",
            "correlation_id": "corr-1",
        },
        headers={"correlation_id": "corr-1"},
    )
    assert list(message.payload) == avro_fields("vip_tier_updated.avsc")


def test_tier_assigned_with_and_without_a_cause() -> None:
    event_id, merchant, customer, cause = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    message = events.tier_assigned(
        event_id=event_id,
        merchant_id=merchant,
        customer_id=customer,
        tier_id="member",
        assigned_at=WHEN,
        correlation_id="corr-2",
        cause_event_id=cause,
    )
    assert message == events.OutboxMessage(
        event_id=event_id,
        merchant_id=merchant,
        topic=topics.VIP_TIER_ASSIGNED,
        key=f"{merchant}:{customer}",
        payload={
            "event_id": str(event_id),
            "customer_id": str(customer),
            "merchant_id": str(merchant),
            "tier_id": "member",
            "assigned_at": WHEN_MS,
            "correlation_id": "corr-2",
            "cause_event_id": str(cause),
            "previous_tier_id": None,
            "direction": "initial",
            "reason": "default",
            "bonus_points": 0,
            "program_version": 0,
            "job_id": None,
        },
        headers={"correlation_id": "corr-2", "cause_event_id": str(cause)},
    )
    assert list(message.payload) == avro_fields("vip_tier_assigned.avsc")
    uncaused = events.tier_assigned(
        event_id=event_id,
        merchant_id=merchant,
        customer_id=customer,
        tier_id="member",
        assigned_at=WHEN,
        correlation_id="corr-2",
        cause_event_id=None,
    )
    assert uncaused.payload["cause_event_id"] is None
    assert uncaused.headers == {"correlation_id": "corr-2"}


def test_times_are_epoch_milliseconds() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert events._ts_millis(epoch) == 0
    assert events._ts_millis(WHEN) == WHEN_MS


def test_tier_assigned_by_progression_and_traced() -> None:
    event_id, merchant, customer = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    message = events.tier_assigned(
        event_id=event_id,
        merchant_id=merchant,
        customer_id=customer,
        tier_id="gold",
        assigned_at=WHEN,
        correlation_id="corr-3",
        cause_event_id=None,
        traceparent=traceparent,
        previous_tier_id="silver",
        direction="up",
        reason="points",
        bonus_points=500,
        program_version=3,
    )
    assert message.traceparent == traceparent
    assert {
        k: message.payload[k] for k in ("previous_tier_id", "direction", "reason", "bonus_points", "program_version")
    } == {
        "previous_tier_id": "silver",
        "direction": "up",
        "reason": "points",
        "bonus_points": 500,
        "program_version": 3,
    }
    updated = events.tier_updated(
        event_id=event_id,
        merchant_id=merchant,
        tier_id="gold",
        updated_fields=["name"],
        updated_at=WHEN,
        actor="bob",
        correlation_id="corr-3",
        traceparent=traceparent,
    )
    assert updated.traceparent == traceparent
