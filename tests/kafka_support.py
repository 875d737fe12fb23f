"""Test tools for the real Kafka and schema registry: produce customer.created, read topics from their end."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, Undecodable, schema_text
from campaign_service.adapters.schema_registry import registry_client
from tests.dependencies import dependency_sh

# librdkafka's lines (e.g. "Connection refused" while a chaos test has the broker down) go to
# pytest's captured logs, not raw to stderr.
_LIBRDKAFKA_LOG = logging.getLogger("tests.librdkafka")


def _core_customer_created() -> str:
    """The Core Service's customer.created schema: ours (the reader copy) and a field we do not read.
    Tests play the Core Service with it, so the subject never holds our copy unless we wrote it."""
    schema = json.loads(schema_text(topics.CUSTOMER_CREATED))
    schema["fields"].append({"name": "signup_channel", "type": "string", "default": "web"})
    return json.dumps(schema, separators=(",", ":"))


CORE_CUSTOMER_CREATED = _core_customer_created()


def core_service_codec(registry_url: str, customer_created: str = CORE_CUSTOMER_CREATED) -> AvroWireCodec:
    """Encodes customer.created as the Core Service does (it owns and registers that subject)."""
    return AvroWireCodec(registry_client(registry_url), produces={topics.CUSTOMER_CREATED: customer_created})


@dataclass(frozen=True)
class Received:
    topic: str
    partition: int
    key: str | None
    headers: dict[str, str]
    value: bytes | None
    payload: dict[str, Any] | None  # None when the value is not decodable
    at: float = 0.0  # time.monotonic() when the reader got it
    raw_headers: list[tuple[str, bytes | None]] = field(default_factory=list)  # as on the wire, in order

    @property
    def event_id(self) -> str | None:
        return str(self.payload["event_id"]) if self.payload else None


class Reading:
    """What every test reader offers on top of its `poll()` (read what has arrived, waiting up to
    0.2 s) and `received`: waiting for a condition, reading on for a while, and filtering."""

    topic: str
    received: list[Received]

    async def poll(self) -> None:
        raise NotImplementedError

    async def wait_for(self, done: Callable[[list[Received]], bool], within: float = 30.0) -> list[Received]:
        """Reads until `done(all received so far)` holds; fails after `within` seconds."""
        deadline = time.monotonic() + within
        while not done(self.received):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: condition not met in {within}s; got {self.received!r}"[:3000])
            await self.poll()
        return self.received

    async def settle(self, seconds: float) -> list[Received]:
        """Keeps reading for `seconds` more (to see duplicates that would come late)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self.poll()
        return self.received

    def matching(self, **payload_fields: Any) -> list[Received]:
        return [
            r
            for r in self.received
            if r.payload is not None and all(str(r.payload.get(k)) == str(v) for k, v in payload_fields.items())
        ]


class TopicReader(Reading):
    """Reads a topic from the offsets it had when the reader was made: only what comes after."""

    def __init__(self, broker: str, topic: str, codec: AvroWireCodec) -> None:
        self.topic = topic
        self._decoder = codec.reader(None)  # as written: tests check what was sent
        self._consumer = Consumer(
            {
                "bootstrap.servers": broker,
                "group.id": f"test-reader-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "reconnect.backoff.max.ms": 1000,
                "logger": _LIBRDKAFKA_LOG,
            }
        )
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        start = []
        for p in partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            start.append(TopicPartition(topic, p, high))
        self._consumer.assign(start)
        self.received: list[Received] = []

    async def poll(self) -> None:
        """Reads what has arrived (waits up to 0.2 s for something)."""
        for m in await asyncio.to_thread(self._consumer.consume, 200, 0.2):
            if m.error() is not None:
                continue
            try:
                payload: dict[str, Any] | None = await self._decoder.decode(m.value())
            except Undecodable:
                payload = None
            raw_headers = cast("list[tuple[str, bytes | None]]", m.headers() or [])  # a list when consumed
            headers = {k: v.decode("utf-8", "replace") if v is not None else "" for k, v in raw_headers}
            key = m.key()
            self.received.append(
                Received(
                    m.topic() or "",
                    m.partition() or 0,
                    key.decode() if key else None,
                    headers,
                    m.value(),
                    payload,
                    time.monotonic(),
                    raw_headers,
                )
            )

    def close(self) -> None:
        self._consumer.close()


class CustomerEvents:
    """Plays the Core Service: produces customer.created (Avro, registered schema; `codec` from
    core_service_codec)."""

    def __init__(self, broker: str, codec: AvroWireCodec) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": broker,
                "enable.idempotence": True,
                "acks": "all",
                "reconnect.backoff.max.ms": 1000,
                "logger": _LIBRDKAFKA_LOG,
            }
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
        traceparent: str | None = None,
        wait: bool = True,
    ) -> uuid.UUID:
        """Produces one customer.created and waits until the broker has it. With wait=False it
        returns at once: while the broker is down the producer keeps the message and retries
        (librdkafka's 5-minute message timeout); `flush` waits for all of them."""
        event_id = event_id or uuid.uuid4()
        payload = {
            "event_id": str(event_id),
            "customer_id": str(customer_id or uuid.uuid4()),
            "merchant_id": str(merchant_id),
            "created_at": int(time.time() * 1000),
            "correlation_id": None,
        }
        headers: list[tuple[str, str | bytes | None]] = (
            [("correlation_id", correlation_id.encode())] if correlation_id else []
        )
        if traceparent:
            headers.append(("traceparent", traceparent.encode()))  # as an instrumented Core Service sends it
        value = await self._codec.encode(topics.CUSTOMER_CREATED, payload)
        self._producer.produce(topics.CUSTOMER_CREATED, value, (key or str(merchant_id)).encode(), headers=headers)
        self._producer.poll(0)
        if wait:
            await self.flush(15)
        return event_id

    async def flush(self, timeout_s: float) -> None:
        remaining = await asyncio.to_thread(self._producer.flush, timeout_s)
        assert remaining == 0, "customer.created not acknowledged by the broker"

    async def raw(
        self,
        value: bytes | None,
        *,
        key: str,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        topic: str = topics.CUSTOMER_CREATED,
    ) -> None:
        self._producer.produce(topic, value, key.encode(), headers=headers or [])
        await self.flush(15)

    def close(self) -> None:
        self._producer.flush(5)


def drop_records(broker: str, topic: str) -> None:
    """Deletes every record the topic has now: consumer groups made later (which start at the
    earliest offset) then do not wade through a chaos test's thousands of foreign events."""
    config: dict[str, Any] = {"bootstrap.servers": broker, "logger": _LIBRDKAFKA_LOG}  # librdkafka takes a Logger
    admin = AdminClient(config)
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    done = admin.delete_records([TopicPartition(topic, p, OFFSET_END) for p in partitions], request_timeout=30)
    for future in done.values():
        future.result(timeout=30)


def kafka_sh(function: str) -> None:
    """Runs a scripts/lib/kafka.sh function on the test broker (chaos: kafka_kill, kafka_start_again)."""
    dependency_sh("kafka", function)
