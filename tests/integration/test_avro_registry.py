"""The Avro codec in the Confluent wire format against the real registry: what we produce round-trips;
what others produce is read with its writer's schema resolved against our copy."""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, Undecodable, UnencodablePayload, schema_text, subject
from campaign_service.adapters.schema_registry import RegistryRejected, RegistryUnavailable, registry_client
from campaign_service.domain import events
from tests.conftest import free_port, required_env
from tests.kafka_support import core_service_codec


@pytest.fixture
async def codec() -> AsyncIterator[AvroWireCodec]:
    made = AvroWireCodec(registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")))
    yield made
    await made.close()


@pytest.fixture
async def registry() -> AsyncIterator[AsyncSchemaRegistryClient]:
    client = registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"))
    yield client
    await client.aclose()


async def test_produced_events_round_trip_in_the_confluent_wire_format(
    codec: AvroWireCodec, registry: AsyncSchemaRegistryClient
) -> None:
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
        latest = await registry.get_latest_version(subject(message.topic))
        assert (magic, schema_id) == (0, latest.schema_id)
        assert json.loads(latest.schema.schema_str or "null") == json.loads(schema_text(message.topic))
        fresh = AvroWireCodec(registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")))  # writer schema by id
        try:
            decoded = await fresh.reader(message.topic).decode(data)
        finally:
            await fresh.close()
        expected = dict(message.payload)
        stamp = "assigned_at" if "assigned_at" in expected else "updated_at"
        assert (decoded.pop(stamp), expected.pop(stamp)) == (at, int(at.timestamp() * 1000))
        assert decoded == expected


async def test_only_the_topics_we_produce_are_encoded(codec: AvroWireCodec) -> None:
    with pytest.raises(UnencodablePayload, match="not a topic this service produces"):
        await codec.encode(topics.CUSTOMER_CREATED, {"event_id": str(uuid.uuid4())})


async def test_another_services_compatible_writer_schema_is_resolved_against_ours(codec: AvroWireCodec) -> None:
    """The Core Service's customer.created v2: a field we do not read (with a default), and without
    created_at/correlation_id (ours have defaults). Read as our copy: theirs skipped, ours defaulted."""
    ours = json.loads(schema_text(topics.CUSTOMER_CREATED))
    theirs = {
        **ours,
        "fields": [
            *[f for f in ours["fields"] if f["name"] not in ("created_at", "correlation_id")],
            {"name": "loyalty_opt_in", "type": "boolean", "default": False},
        ],
    }
    core = core_service_codec(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"), json.dumps(theirs))
    ids = {"event_id": str(uuid.uuid4()), "customer_id": str(uuid.uuid4()), "merchant_id": str(uuid.uuid4())}
    try:
        data = await core.encode(topics.CUSTOMER_CREATED, {**ids, "loyalty_opt_in": True})
    finally:
        await core.close()
    decoded = await codec.reader(topics.CUSTOMER_CREATED).decode(data)
    assert decoded == {**ids, "created_at": 0, "correlation_id": None}  # defaults as written, no logical type


async def test_a_writer_schema_that_cannot_be_resolved_is_undecodable(codec: AvroWireCodec) -> None:
    theirs = {
        "type": "record",
        "name": "CustomerCreated",
        "namespace": "core.events.v1",
        "fields": [
            {"name": "event_id", "type": "string"},
        ],
    }  # no customer_id/merchant_id, which ours requires (no default)
    core = core_service_codec(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"), json.dumps(theirs))
    try:
        data = await core.encode(topics.CUSTOMER_CREATED, {"event_id": str(uuid.uuid4())})
    finally:
        await core.close()
    with pytest.raises(Undecodable, match="does not match"):
        await codec.reader(topics.CUSTOMER_CREATED).decode(data)


async def test_a_non_uuid_id_in_a_well_formed_record_is_decoded_for_the_handler_to_reject(
    codec: AvroWireCodec,
) -> None:
    core = core_service_codec(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL"))
    try:
        data = await core.encode(
            topics.CUSTOMER_CREATED,
            {"event_id": "not-a-uuid", "customer_id": str(uuid.uuid4()), "merchant_id": str(uuid.uuid4())},
        )
    finally:
        await core.close()
    decoded = await codec.reader(topics.CUSTOMER_CREATED).decode(data)
    assert decoded["event_id"] == "not-a-uuid"


async def test_invalid_schema_and_unreachable_registry_are_told_apart() -> None:
    bad = AvroWireCodec(
        registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")),
        produces={f"test-{uuid.uuid4()}": '{"type": "record", "name": "X", "fields": 3}'},
    )
    try:
        with pytest.raises((RegistryRejected, UnencodablePayload)):
            await bad.register_all()
    finally:
        await bad.close()
    down = AvroWireCodec(registry_client(f"http://127.0.0.1:{free_port()}/apis/ccompat/v7", timeout_s=2))
    try:
        with pytest.raises(RegistryUnavailable):
            await down.register_all()
        with pytest.raises(RegistryUnavailable):
            await down.reader(topics.CUSTOMER_CREATED).decode(b"\x00" + struct.pack(">I", 1) + b"abc")
    finally:
        await down.close()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (None, "shorter"),
        (b"\x00\x00", "shorter"),
        (b"\x01\x00\x00\x00\x01abc", "magic byte 1"),
        (b"\x00" + struct.pack(">I", 987_654_321) + b"abc", "not registered"),
    ],
)
async def test_foreign_bytes_are_undecodable(codec: AvroWireCodec, data: bytes | None, why: str) -> None:
    with pytest.raises(Undecodable, match=why):
        await codec.reader(topics.CUSTOMER_CREATED).decode(data)


async def test_body_that_does_not_match_its_schema_is_undecodable(codec: AvroWireCodec) -> None:
    good = await codec.encode(
        topics.VIP_TIER_UPDATED,
        {
            "event_id": str(uuid.uuid4()),
            "merchant_id": str(uuid.uuid4()),
            "tier_id": "gold",
            "updated_fields": ["name"],
            "updated_at": 0,
        },
    )
    with pytest.raises(Undecodable, match="does not match"):
        await codec.reader(None).decode(good[:5] + b"\x02")


NEW_ASSIGNED_FIELDS = ("previous_tier_id", "direction", "reason", "bonus_points", "program_version")


async def test_the_registry_accepts_the_evolved_vip_tier_assigned_under_backward_compatibility(
    registry: AsyncSchemaRegistryClient,
) -> None:
    """Issue 13 added fields to vip_tier.assigned; with defaults, a consumer on the new schema reads
    what the old one wrote. The real registry decides, on a subject set to BACKWARD, and refuses the
    same change without defaults (so the check is not vacuous)."""
    current = json.loads(schema_text(topics.VIP_TIER_ASSIGNED))
    previous = {**current, "fields": [f for f in current["fields"] if f["name"] not in NEW_ASSIGNED_FIELDS]}
    assert len(previous["fields"]) == len(current["fields"]) - len(NEW_ASSIGNED_FIELDS)
    name = f"compat-{uuid.uuid4().hex[:8]}-value"
    await registry.set_compatibility(subject_name=name, level="BACKWARD")
    await registry.register_schema(name, Schema(json.dumps(previous), "AVRO"))
    without_defaults = {
        **current,
        "fields": [{k: v for k, v in f.items() if k != "default"} if f["name"] in NEW_ASSIGNED_FIELDS else f
                   for f in current["fields"]],
    }  # fmt: skip
    with pytest.raises(SchemaRegistryError):
        await registry.register_schema(name, Schema(json.dumps(without_defaults), "AVRO"))
    await registry.register_schema(name, Schema(json.dumps(current), "AVRO"))
    assert len(await registry.get_versions(name)) == 2


async def test_the_registry_accepts_job_id_on_vip_tier_assigned_under_backward_compatibility(
    registry: AsyncSchemaRegistryClient,
) -> None:
    """Issue 14 adds `job_id` (nullable, default null): the schema without it, then with it, on a
    BACKWARD subject; the same field without a default is refused (the check is not vacuous)."""
    current = json.loads(schema_text(topics.VIP_TIER_ASSIGNED))
    assert next(f for f in current["fields"] if f["name"] == "job_id")["default"] is None
    previous = {**current, "fields": [f for f in current["fields"] if f["name"] != "job_id"]}
    name = f"compat-job-{uuid.uuid4().hex[:8]}-value"
    await registry.set_compatibility(subject_name=name, level="BACKWARD")
    await registry.register_schema(name, Schema(json.dumps(previous), "AVRO"))
    without_default = {
        **current,
        "fields": [{k: v for k, v in f.items() if k != "default"} if f["name"] == "job_id" else f
                   for f in current["fields"]],
    }  # fmt: skip
    with pytest.raises(SchemaRegistryError):
        await registry.register_schema(name, Schema(json.dumps(without_default), "AVRO"))
    await registry.register_schema(name, Schema(json.dumps(current), "AVRO"))
    assert len(await registry.get_versions(name)) == 2


async def test_points_recorded_round_trips_through_the_registry(codec: AvroWireCodec) -> None:
    points = AvroWireCodec(  # playing the Points service, the owner of points.recorded
        registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")),
        produces={topics.POINTS_RECORDED: schema_text(topics.POINTS_RECORDED)},
    )
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
    try:
        data = await points.encode(topics.POINTS_RECORDED, payload)
    finally:
        await points.close()
    decoded = await codec.reader(topics.POINTS_RECORDED).decode(data)
    assert decoded["type"] == "reverse"
    assert decoded["occurred_at"] == payload["occurred_at"]
    assert str(decoded["reverses_entry_id"]) == payload["reverses_entry_id"]


async def test_progression_audit_and_warning_events_round_trip(codec: AvroWireCodec) -> None:
    """vip_tier.customer_erased and vip_tier.downgrade_scheduled as the builders make them, and
    customer.deleted as its owner (the Core Service) would write it."""
    merchant, customer, cause = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 12, 1, tzinfo=UTC)
    erased = events.customer_erased(
        event_id=uuid.uuid4(), merchant_id=merchant, customer_id=customer, cause_event_id=cause,
        erased_at=at, correlation_id="c-3",
    )  # fmt: skip
    warning = events.downgrade_scheduled(
        event_id=uuid.uuid4(), merchant_id=merchant, customer_id=customer, tier_id="gold",
        target_tier_id="silver", deadline=at, points_needed=700, program_version=3, correlation_id="c-4",
    )  # fmt: skip
    core = AvroWireCodec(
        registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")),
        produces={topics.CUSTOMER_DELETED: schema_text(topics.CUSTOMER_DELETED)},
    )
    deleted = {
        "event_id": str(uuid.uuid4()),
        "merchant_id": str(merchant),
        "customer_id": str(customer),
        "deleted_at": int(at.timestamp() * 1000),
    }
    try:
        cases = [
            (erased.topic, await codec.encode(erased.topic, erased.payload), erased.payload, "erased_at"),
            (warning.topic, await codec.encode(warning.topic, warning.payload), warning.payload, "deadline"),
            (topics.CUSTOMER_DELETED, await core.encode(topics.CUSTOMER_DELETED, deleted), deleted, "deleted_at"),
        ]
    finally:
        await core.close()
    for topic, data, payload, stamp in cases:
        decoded = await codec.reader(topic).decode(data)
        expected = dict(payload)
        assert (decoded.pop(stamp), expected.pop(stamp)) == (at, int(at.timestamp() * 1000))
        assert decoded == expected
