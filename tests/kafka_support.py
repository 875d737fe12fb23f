"""Test tools for the real Kafka and schema registry: produce customer.created, read topics from their end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, Undecodable

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Received:
    topic: str
    partition: int
    key: str | None
    headers: dict[str, str]
    value: bytes | None
    payload: dict[str, Any] | None  # None when the value is not decodable

    @property
    def event_id(self) -> str | None:
        return str(self.payload["event_id"]) if self.payload else None


class TopicReader:
    """Reads a topic from the offsets it had when the reader was made: only what comes after."""

    def __init__(self, broker: str, topic: str, codec: AvroWireCodec) -> None:
        self.topic = topic
        self._codec = codec
        self._consumer = Consumer(
            {
                "bootstrap.servers": broker,
                "group.id": f"test-reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "reconnect.backoff.max.ms": 1000,
            }
        )
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        start = []
        for p in partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            start.append(TopicPartition(topic, p, high))
        self._consumer.assign(start)
        self.received: list[Received] = []

    async def _poll(self) -> None:
        for m in await asyncio.to_thread(self._consumer.consume, 200, 0.2):
            if m.error() is not None:
                continue
            try:
                payload: dict[str, Any] | None = await self._codec.decode(m.value())
            except Undecodable:
                payload = None
            headers = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in (m.headers() or [])}
            key = m.key()
            self.received.append(
                Received(
                    m.topic() or "", m.partition() or 0, key.decode() if key else None, headers, m.value(), payload
                )
            )

    async def wait_for(self, done: Callable[[list[Received]], bool], within: float = 30.0) -> list[Received]:
        """Reads until `done(all received so far)` holds; fails after `within` seconds."""
        deadline = time.monotonic() + within
        while not done(self.received):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: condition not met in {within}s; got {self.received!r}"[:3000])
            await self._poll()
        return self.received

    async def settle(self, seconds: float) -> list[Received]:
        """Keeps reading for `seconds` more (to see duplicates that would come late)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self._poll()
        return self.received

    def matching(self, **payload_fields: Any) -> list[Received]:
        return [
            r
            for r in self.received
            if r.payload is not None and all(str(r.payload.get(k)) == str(v) for k, v in payload_fields.items())
        ]

    def close(self) -> None:
        self._consumer.close()


class CustomerEvents:
    """Plays the Core Service: produces customer.created (Avro, registered schema)."""

    def __init__(self, broker: str, codec: AvroWireCodec) -> None:
        self._producer = Producer(
            {"bootstrap.servers": broker, "enable.idempotence": True, "acks": "all", "reconnect.backoff.max.ms": 1000}
        )
        self._codec = codec

    async def created(
        self,
        merchant_id: uuid.UUID,
        customer_id: uuid.UUID | None = None,
        *,
        event_id: uuid.UUID | None = None,
        key: str | None = None,
        correlation_id: str | None = None,
    ) -> uuid.UUID:
        event_id = event_id or uuid.uuid4()
        payload = {
            "event_id": str(event_id),
            "customer_id": str(customer_id or uuid.uuid4()),
            "merchant_id": str(merchant_id),
            "created_at": int(time.time() * 1000),
            "correlation_id": None,
        }
        headers = [("correlation_id", correlation_id.encode())] if correlation_id else []
        await self.raw(await self._codec.encode(topics.CUSTOMER_CREATED, payload), key=key or str(merchant_id),
                       headers=headers)
        return event_id

    async def raw(self, value: bytes | None, *, key: str, headers: list[tuple[str, bytes]] | None = None) -> None:
        self._producer.produce(topics.CUSTOMER_CREATED, value, key.encode(), headers=headers or [])
        remaining = await asyncio.to_thread(self._producer.flush, 15)
        assert remaining == 0, "customer.created not acknowledged by the broker"

    def close(self) -> None:
        self._producer.flush(5)


def kafka_sh(function: str) -> None:
    """Runs a scripts/lib/kafka.sh function on the test broker (chaos: kafka_kill, kafka_start_again)."""
    state = os.environ.get("CAMPAIGN_TEST_SERVICES_DIR")
    assert state, "CAMPAIGN_TEST_SERVICES_DIR is not set: run through scripts/test"
    done = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "$1/scripts/lib/kafka.sh"; {function} "$2/kafka"', "_", REPO, state],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{function} failed: {done.stderr.decode(errors='replace')[:2500]}"
