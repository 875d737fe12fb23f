"""The schema registry client and the Confluent wire format against the real registry."""

from __future__ import annotations

import json
import struct
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, Undecodable, schema_text, subject
from campaign_service.adapters.schema_registry import (
    RegistryRejected,
    RegistryUnavailable,
    SchemaRegistryClient,
    UnknownSchemaId,
)
from campaign_service.domain import events
from tests.conftest import free_port, required_env


@pytest.fixture
async def registry() -> Any:
    client = SchemaRegistryClient(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"))
    yield client
    await client.close()


async def test_register_is_idempotent_and_ids_resolve_to_the_schema(registry: SchemaRegistryClient) -> None:
    text = schema_text(topics.VIP_TIER_ASSIGNED)
    first = await registry.register(subject(topics.VIP_TIER_ASSIGNED), text)
    fresh = SchemaRegistryClient(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"))  # no cache
    try:
        assert await fresh.register(subject(topics.VIP_TIER_ASSIGNED), text) == first
        assert json.loads(await fresh.schema(first)) == json.loads(text)
    finally:
        await fresh.close()


async def test_unknown_id_invalid_schema_and_unreachable_registry_are_told_apart(
    registry: SchemaRegistryClient,
) -> None:
    with pytest.raises(UnknownSchemaId):
        await registry.schema(987_654_321)
    with pytest.raises(RegistryRejected):
        await registry.register(f"test-{uuid.uuid4()}-value", '{"type": "record", "name": "X", "fields": 3}')
    down = SchemaRegistryClient(f"http://127.0.0.1:{free_port()}/apis/ccompat/v7", timeout_s=2)
    try:
        with pytest.raises(RegistryUnavailable):
            await down.register("x-value", schema_text(topics.VIP_TIER_UPDATED))
    finally:
        await down.close()


async def test_produced_events_round_trip_in_the_confluent_wire_format(registry: SchemaRegistryClient) -> None:
    codec = AvroWireCodec(registry)
    merchant, customer, cause = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    at = datetime(2025, 8, 10, 12, 0, 0, 123000, tzinfo=UTC)
    assigned = events.tier_assigned(
        event_id=uuid.uuid4(),
        merchant_id=merchant,
        customer_id=customer,
        tier_id="gold",
        assigned_at=at,
        correlation_id="c-1",
        cause_event_id=cause,
    )
    updated = events.tier_updated(
        event_id=uuid.uuid4(),
        merchant_id=merchant,
        tier_id="gold",
        updated_fields=["name", "min_points"],
        updated_at=at,
        actor="admin@example",
        correlation_id="c-2",
    )
    for message in (assigned, updated):
        data = await codec.encode(message.topic, message.payload)
        magic, schema_id = struct.unpack(">bI", data[:5])
        expected_id = await registry.register(subject(message.topic), schema_text(message.topic))
        assert (magic, schema_id) == (0, expected_id)
        decoded = await AvroWireCodec(registry).decode(data)  # a fresh codec: the writer schema comes by id
        normalized = {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in decoded.items()}
        expected = dict(message.payload)
        stamp = "assigned_at" if "assigned_at" in expected else "updated_at"
        assert (normalized.pop(stamp), expected.pop(stamp)) == (at, int(at.timestamp() * 1000))
        assert normalized == expected


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (None, "shorter"),
        (b"\x00\x00", "shorter"),
        (b"\x01\x00\x00\x00\x01abc", "magic byte 1"),
        (b"\x00" + struct.pack(">I", 987_654_321) + b"abc", "not registered"),
    ],
)
async def test_foreign_bytes_are_undecodable(registry: SchemaRegistryClient, data: bytes | None, why: str) -> None:
    with pytest.raises(Undecodable, match=why):
        await AvroWireCodec(registry).decode(data)


async def test_body_that_does_not_match_its_schema_is_undecodable(registry: SchemaRegistryClient) -> None:
    codec = AvroWireCodec(registry)
    good = await codec.encode(
        topics.CUSTOMER_CREATED,
        {"event_id": str(uuid.uuid4()), "customer_id": str(uuid.uuid4()), "merchant_id": str(uuid.uuid4())},
    )
    with pytest.raises(Undecodable, match="does not match"):
        await codec.decode(good[:5] + b"\x02")


NEW_ASSIGNED_FIELDS = ("previous_tier_id", "direction", "reason", "bonus_points", "program_version")


async def test_the_registry_accepts_the_evolved_vip_tier_assigned_under_backward_compatibility(
    registry: SchemaRegistryClient,
) -> None:
    """Issue 13 added fields to vip_tier.assigned; with defaults, a consumer on the new schema reads
    what the old one wrote. The real registry decides, on a subject set to BACKWARD, and refuses the
    same change without defaults (so the check is not vacuous)."""
    current = json.loads(schema_text(topics.VIP_TIER_ASSIGNED))
    previous = {**current, "fields": [f for f in current["fields"] if f["name"] not in NEW_ASSIGNED_FIELDS]}
    assert len(previous["fields"]) == len(current["fields"]) - len(NEW_ASSIGNED_FIELDS)
    name = f"compat-{uuid.uuid4().hex[:8]}-value"
    status, _ = await registry._call("PUT", f"/config/{name}", {"compatibility": "BACKWARD"})
    assert status == 200
    await registry.register(name, json.dumps(previous))
    without_defaults = {
        **current,
        "fields": [{k: v for k, v in f.items() if k != "default"} if f["name"] in NEW_ASSIGNED_FIELDS else f
                   for f in current["fields"]],
    }  # fmt: skip
    with pytest.raises(RegistryRejected):
        await registry.register(name, json.dumps(without_defaults))
    await registry.register(name, json.dumps(current))
    status, versions = await registry._call("GET", f"/subjects/{name}/versions")
    assert status == 200
    assert len(versions) == 2


async def test_points_recorded_round_trips_through_the_registry(registry: SchemaRegistryClient) -> None:
    codec = AvroWireCodec(registry)
    payload = {
        "event_id": str(uuid.uuid4()),
        "merchant_id": str(uuid.uuid4()),
        "customer_id": str(uuid.uuid4()),
        "entry_id": str(uuid.uuid4()),
        "type": "reverse",
        "points": -40,
        "qualifying_points": -40,
        "reverses_entry_id": str(uuid.uuid4()),
        "occurred_at": datetime(2026, 5, 1, tzinfo=UTC),
        "correlation_id": None,
    }
    decoded = await codec.decode(await codec.encode(topics.POINTS_RECORDED, payload))
    assert decoded["type"] == "reverse"
    assert decoded["occurred_at"] == payload["occurred_at"]
    assert str(decoded["reverses_entry_id"]) == payload["reverses_entry_id"]
