"""Avro codec per message, ours against confluent_kafka.schema_registry, against the real registry.

Encoding a vip_tier.assigned payload (what the relay does per outbox row) and decoding a
customer.created value written with the Core Service's schema against our reader schema (what the
consumer does per message), with warm caches (schema ids known): only the per-message cost is
measured. The library's AsyncAvroSerializer/AsyncAvroDeserializer used directly, and our codec
(wire.py). The steps run interleaved, in rounds, so that load on a shared machine hits each
alike; the best round of each is reported.

    .venv/bin/python -m bench.avro_codec [--messages 20000] [--rounds 5]

Needs CAMPAIGN_SCHEMA_REGISTRY_URL (e.g. from `scripts/services up DIR`, `source DIR/env`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka.schema_registry._async.avro import AsyncAvroDeserializer, AsyncAvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from campaign_service import topics
from campaign_service.adapters.kafka import wire
from campaign_service.adapters.schema_registry import registry_client

Step = Callable[[], Awaitable[object]]


def assigned_payload() -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "customer_id": str(uuid.uuid4()),
        "merchant_id": str(uuid.uuid4()),
        "tier_id": "gold",
        "assigned_at": datetime.now(UTC),
        "correlation_id": str(uuid.uuid4()),
        "cause_event_id": str(uuid.uuid4()),
    }


def created_payload() -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "customer_id": str(uuid.uuid4()), "merchant_id": str(uuid.uuid4())}


async def per_message_us(step: Step, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await step()
    return (time.perf_counter() - started) / n * 1e6


async def library_steps(url: str, core: wire.AvroWireCodec) -> dict[str, Step]:
    """The library's serializer and deserializer, used directly (reader schema: ours)."""
    client = registry_client(url)
    conf = {"subject.name.strategy.type": "TOPIC"}
    serializer = await AsyncAvroSerializer(client, wire.schema_text(topics.VIP_TIER_ASSIGNED), conf=conf)
    deserializer = await AsyncAvroDeserializer(client, wire.schema_text(topics.CUSTOMER_CREATED))
    ctx_out = SerializationContext(topics.VIP_TIER_ASSIGNED, MessageField.VALUE)
    ctx_in = SerializationContext(topics.CUSTOMER_CREATED, MessageField.VALUE)
    value = await core.encode(topics.CUSTOMER_CREATED, created_payload())
    payload = assigned_payload()

    async def encode() -> object:
        return await serializer(payload, ctx_out)

    async def decode() -> object:
        return await deserializer(value, None)

    async def decode_ctx() -> object:
        return await deserializer(value, ctx_in)

    return {"library encode": encode, "library decode": decode, "library decode (with context)": decode_ctx}


async def codec_steps(url: str, core: wire.AvroWireCodec) -> dict[str, Step]:
    """Ours: AvroWireCodec.encode (the library's serializer inside) and AvroReader.decode (fastavro)."""
    codec = wire.AvroWireCodec(registry_client(url))
    reader = codec.reader(topics.CUSTOMER_CREATED)
    value = await core.encode(topics.CUSTOMER_CREATED, created_payload())
    payload = assigned_payload()

    async def encode() -> object:
        return await codec.encode(topics.VIP_TIER_ASSIGNED, payload)

    async def decode() -> object:
        return await reader.decode(value)

    return {"ours encode": encode, "ours decode": decode}


async def run(args: argparse.Namespace) -> dict[str, float]:
    url = os.environ["CAMPAIGN_SCHEMA_REGISTRY_URL"]
    # The Core Service's role: customer.created framed with its own schema, one field more than ours.
    theirs = json.loads(wire.schema_text(topics.CUSTOMER_CREATED))
    theirs["fields"].append({"name": "signup_channel", "type": "string", "default": "web"})
    core = wire.AvroWireCodec(registry_client(url), produces={topics.CUSTOMER_CREATED: json.dumps(theirs)})
    steps = {**await library_steps(url, core), **await codec_steps(url, core)}
    best = dict.fromkeys(steps, 1e9)
    for step in steps.values():  # warm every cache and code path
        await per_message_us(step, 200)
    for _ in range(args.rounds):
        for name, step in steps.items():
            best[name] = min(best[name], await per_message_us(step, args.messages))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20000, help="messages per round and step")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    for name, us in result.items():
        print(f"{name:>30}: {us:6.1f} µs/message")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
