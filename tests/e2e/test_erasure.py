"""customer.deleted end to end through the service process on the real Kafka and registry: the
customer's tier data is erased and `vip_tier.customer_erased` published; an unknown merchant's
event is dead-lettered."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec
from tests.conftest import required_env

pytestmark = pytest.mark.kafka


async def produce_deleted(codec: AvroWireCodec, merchant: uuid.UUID, customer: uuid.UUID) -> uuid.UUID:
    event_id = uuid.uuid4()
    value = await codec.encode(
        topics.CUSTOMER_DELETED,
        {
            "event_id": str(event_id),
            "merchant_id": str(merchant),
            "customer_id": str(customer),
            "deleted_at": int(time.time() * 1000),
        },
    )
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
    event_id = await produce_deleted(avro_codec, merchant, customer)
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
    await produce_deleted(avro_codec, stranger, customer)
    key = f"{stranger}:{customer}"
    [dead] = [r for r in await dlq.wait_for(lambda rs: any(r.key == key for r in rs)) if r.key == key]
    assert dead.headers["dlq_reason"] == "unknown_merchant"
