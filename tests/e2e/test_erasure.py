"""customer.deleted end to end through the service process on the real Kafka and registry: the
customer's tier data is erased and `vip_tier.customer_erased` published; an unknown merchant's
event is dead-lettered."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, schema_text
from campaign_service.adapters.schema_registry import registry_client
from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import required_env
from tests.tokens import auth_channel

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.kafka


async def produce_deleted(merchant: uuid.UUID, customer: uuid.UUID) -> uuid.UUID:
    """Plays the Core Service, the owner of customer.deleted and its subject."""
    event_id = uuid.uuid4()
    codec = AvroWireCodec(
        registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")),
        produces={topics.CUSTOMER_DELETED: schema_text(topics.CUSTOMER_DELETED)},
    )
    value = await codec.encode(
        topics.CUSTOMER_DELETED,
        {
            "event_id": str(event_id),
            "merchant_id": str(merchant),
            "customer_id": str(customer),
            "deleted_at": int(time.time() * 1000),
        },
    )
    await codec.close()
    producer = Producer({"bootstrap.servers": required_env("KAFKA_BROKER"), "acks": "all"})
    producer.produce(topics.CUSTOMER_DELETED, value, f"{merchant}:{customer}".encode())
    assert await asyncio.to_thread(producer.flush, 15) == 0
    return event_id


async def test_customer_deleted_erases_and_is_audited(
    event_service: Any, merchant_with_default: Any, customer_events: Any, read_topic: Any,
    superuser_conn: Any, avro_codec: AvroWireCodec,
) -> None:  # fmt: skip
    merchant, customer = await merchant_with_default(), uuid.uuid4()
    assigned = read_topic(topics.VIP_TIER_ASSIGNED)
    created = await customer_events.created(merchant, customer)
    await assigned.wait_for(lambda rs: any(str((r.payload or {}).get("cause_event_id")) == str(created) for r in rs))
    erased = read_topic(topics.VIP_TIER_CUSTOMER_ERASED)
    event_id = await produce_deleted(merchant, customer)
    [msg] = [
        r
        for r in await erased.wait_for(lambda rs: any(r.key == f"{merchant}:{customer}" for r in rs))
        if r.key == f"{merchant}:{customer}"
    ]
    assert msg.payload is not None
    assert str(msg.payload["cause_event_id"]) == str(event_id)
    for table in ("customer_tiers", "customer_tier_history"):
        n = await superuser_conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE merchant_id = $1 AND customer_id = $2", merchant, customer
        )
        assert n == 0, table


async def test_customer_deleted_of_an_unknown_merchant_is_dead_lettered(
    event_service: Any, read_topic: Any, avro_codec: AvroWireCodec
) -> None:
    dlq = read_topic(topics.CUSTOMER_DELETED_DLQ)
    stranger, customer = uuid.uuid4(), uuid.uuid4()
    await produce_deleted(stranger, customer)
    key = f"{stranger}:{customer}"
    [dead] = [r for r in await dlq.wait_for(lambda rs: any(r.key == key for r in rs)) if r.key == key]
    assert dead.headers["dlq_reason"] == "unknown_merchant"


async def test_worked_example_points_script_moves_the_customer(
    event_service: Any, new_merchant: Any, read_topic: Any
) -> None:
    """The README's worked example: scripts/produce_points.py -> points.recorded -> the customer
    moves up, seen through GetCustomerTierStatus and ListCustomerTierHistory."""
    merchant, customer = await new_merchant(), uuid.uuid4()
    assigned = read_topic(topics.VIP_TIER_ASSIGNED)
    async with auth_channel(event_service.target) as channel:
        stub = campaign_grpc.CampaignServiceStub(channel)
        for tier_id, points in (("silver", 100), ("gold", 1000)):
            tier = pb.VIPTier(tier_id=tier_id, name=tier_id.title(), min_points=points, is_default=tier_id == "silver")
            await stub.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=tier))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "scripts" / "produce_points.py"),
            "--merchant", str(merchant), "--customer", str(customer), "--points", "1200",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        event_id = json.loads(out)["event_id"]
        await assigned.wait_for(lambda rs: any(str((r.payload or {}).get("cause_event_id")) == event_id for r in rs))
        status = await stub.GetCustomerTierStatus(
            pb.GetCustomerTierStatusRequest(merchant_id=str(merchant), customer_id=str(customer))
        )
        assert (status.tier.tier_id, status.window_points) == ("gold", 1200)
        history = await stub.ListCustomerTierHistory(
            pb.ListCustomerTierHistoryRequest(merchant_id=str(merchant), customer_id=str(customer))
        )
        assert [(e.tier_id, e.reason, e.cause_event_id) for e in history.entries] == [
            ("gold", "threshold_reached", event_id)
        ]
