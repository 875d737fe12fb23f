"""The payloads of the progression events we announce (erasure audit, downgrade warning): the
shapes their Avro schemas in avro/ describe, field by field."""

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


def test_customer_erased_carries_ids_only() -> None:
    event_id, merchant, customer, cause = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    message = events.customer_erased(
        event_id=event_id,
        merchant_id=merchant,
        customer_id=customer,
        cause_event_id=cause,
        erased_at=WHEN,
        correlation_id="corr-9",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert message == events.OutboxMessage(
        event_id=event_id,
        merchant_id=merchant,
        topic=topics.VIP_TIER_CUSTOMER_ERASED,
        key=f"{merchant}:{customer}",
        payload={
            "event_id": str(event_id),
            "merchant_id": str(merchant),
            "customer_id": str(customer),
            "cause_event_id": str(cause),
            "erased_at": WHEN_MS,
        },
        headers={"correlation_id": "corr-9", "cause_event_id": str(cause)},
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert list(message.payload) == avro_fields("vip_tier_customer_erased.avsc")


def test_customer_erased_without_a_trace() -> None:
    message = events.customer_erased(
        event_id=uuid.uuid4(),
        merchant_id=uuid.uuid4(),
        customer_id=uuid.uuid4(),
        cause_event_id=uuid.uuid4(),
        erased_at=WHEN,
        correlation_id="c",
    )
    assert message.traceparent is None


def test_downgrade_scheduled_says_what_keeps_the_tier() -> None:
    event_id, merchant, customer = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    message = events.downgrade_scheduled(
        event_id=event_id,
        merchant_id=merchant,
        customer_id=customer,
        tier_id="gold",
        target_tier_id="silver",
        deadline=WHEN,
        points_needed=250,
        program_version=7,
        correlation_id="corr-3",
    )
    assert message == events.OutboxMessage(
        event_id=event_id,
        merchant_id=merchant,
        topic=topics.VIP_TIER_DOWNGRADE_SCHEDULED,
        key=f"{merchant}:{customer}",
        payload={
            "event_id": str(event_id),
            "merchant_id": str(merchant),
            "customer_id": str(customer),
            "tier_id": "gold",
            "target_tier_id": "silver",
            "deadline": WHEN_MS,
            "points_needed": 250,
            "program_version": 7,
            "correlation_id": "corr-3",
        },
        headers={"correlation_id": "corr-3"},
    )
    assert message.traceparent is None
    assert list(message.payload) == avro_fields("vip_tier_downgrade_scheduled.avsc")
