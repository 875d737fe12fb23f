"""Plays the Points service: produces one Avro `points.recorded` to the local Kafka, registered
in the schema registry like the real producer would (TopicNameStrategy, Confluent wire format).

    source /tmp/svc/env   # KAFKA_BROKER, CAMPAIGN_SCHEMA_REGISTRY_URL (scripts/services up)
    .venv/bin/python scripts/produce_points.py --merchant $M --customer $C --points 1200 [--type earn]

Prints the event as one JSON line (its event_id is the `cause_event_id` of the move it causes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid

from confluent_kafka import Producer

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, schema_text
from campaign_service.adapters.schema_registry import registry_client

TYPES = ("earn", "redeem", "expire", "adjust", "reverse")


async def produce(args: argparse.Namespace) -> dict[str, object]:
    # Playing the Points service, the owner of points.recorded and its subject.
    codec = AvroWireCodec(
        registry_client(os.environ["CAMPAIGN_SCHEMA_REGISTRY_URL"]),
        produces={topics.POINTS_RECORDED: schema_text(topics.POINTS_RECORDED)},
    )
    try:
        payload: dict[str, object] = {
            "event_id": str(uuid.uuid4()),
            "merchant_id": str(uuid.UUID(args.merchant)),
            "customer_id": str(uuid.UUID(args.customer)),
            "entry_id": str(uuid.uuid4()),
            "type": args.type,
            "points": args.points,
            "qualifying_points": args.points if args.qualifying is None else args.qualifying,
            "reverses_entry_id": None,
            "occurred_at": int(time.time() * 1000) if args.occurred_at_ms is None else args.occurred_at_ms,
            "correlation_id": args.correlation_id or str(uuid.uuid4()),
        }
        value = await codec.encode(topics.POINTS_RECORDED, payload)
    finally:
        await codec.close()
    producer = Producer({"bootstrap.servers": os.environ["KAFKA_BROKER"], "acks": "all", "enable.idempotence": True})
    producer.produce(topics.POINTS_RECORDED, value, f"{payload['merchant_id']}:{payload['customer_id']}".encode())
    if producer.flush(15) != 0:
        raise SystemExit("points.recorded not acknowledged by the broker within 15 s")
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merchant", required=True)
    parser.add_argument("--customer", required=True)
    parser.add_argument("--points", type=int, required=True, help="signed delta")
    parser.add_argument("--qualifying", type=int, help="qualifying points (default: --points)")
    parser.add_argument("--type", choices=TYPES, default="earn")
    parser.add_argument("--occurred-at-ms", type=int, help="epoch milliseconds (default: now)")
    parser.add_argument("--correlation-id")
    args = parser.parse_args(argv)
    payload = asyncio.run(produce(args))
    sys.stdout.write(json.dumps(payload) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
