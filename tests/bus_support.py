"""One face for both event buses in tests: play the Core Service (produce customer.created), read
a topic from its end, give a service process the bus, kill and restart the broker.

`Bus("kafka")` uses tests/kafka_support.py; `Bus("rabbitmq")` the same bytes (the Core Service's
codec, Confluent-framed Avro) on the RabbitMQ topology of adapters/rabbitmq/topology.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from confluent_kafka import Consumer, TopicPartition

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, Undecodable, schema_text
from campaign_service.adapters.rabbitmq import topology
from campaign_service.adapters.schema_registry import registry_client
from tests.dependencies import dependency_sh
from tests.kafka_support import CustomerEvents, Reading, Received, TopicReader

# The tests' queue count per topic (the service processes get the same through their environment).
QUEUES = 3


def created_payload(merchant_id: uuid.UUID, customer_id: uuid.UUID | None, event_id: uuid.UUID) -> dict[str, Any]:
    return {
        "event_id": str(event_id),
        "customer_id": str(customer_id or uuid.uuid4()),
        "merchant_id": str(merchant_id),
        "created_at": int(time.time() * 1000),
        "correlation_id": None,
    }


class RabbitTopicReader(Reading):
    """Reads a topic's queues (or a dead-letter queue) from what arrives after it was made: the
    queues are purged first. It is the topic's downstream consumer while it lives; after a broker
    restart it reconnects and reads on (what the queues kept, and what it had not acked yet, which
    may so be received twice)."""

    def __init__(self, url: str, topic: str, codec: AvroWireCodec, queues: int) -> None:
        self.topic = topic
        self._url = url
        self._decoder = codec.reader(None)
        self._queues = queues
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self.received: list[Received] = []

    async def start(self) -> RabbitTopicReader:
        await self._subscribe(purge=True)
        return self

    async def _subscribe(self, *, purge: bool) -> None:
        self._connection = await aio_pika.connect(self._url, timeout=10)
        channel = self._channel = await self._connection.channel()
        await topology.declare(channel, self.topic.removesuffix(".dlq"), self._queues)
        names = [self.topic] if self.topic.endswith(".dlq") else topology.queue_names(self.topic, self._queues)

        async def arrived(m: AbstractIncomingMessage) -> None:
            self._inbox.put_nowait(m)

        for name in names:
            queue = await channel.get_queue(name, ensure=False)
            if purge:
                await queue.purge()
            # Acked once recorded (poll): a message the broker had sent when it was SIGKILLed may
            # never arrive (the kernel resets the connection), and with no_ack it would be gone.
            await queue.consume(arrived, no_ack=False)

    async def poll(self) -> None:
        # A plain connection's is_closed stays False when the broker goes away; its channel's does not.
        if self._channel is None or self._channel.is_closed:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._connection.close(), 2)
            with contextlib.suppress(Exception):  # the broker is still down: try again next poll
                await self._subscribe(purge=False)
        with contextlib.suppress(TimeoutError):
            first = await asyncio.wait_for(self._inbox.get(), 0.2)
            batch = [first]
            while not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            for m in batch:
                try:
                    payload: dict[str, Any] | None = await self._decoder.decode(m.body)
                except Undecodable:
                    payload = None
                headers = {
                    k: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    for k, v in (m.headers or {}).items()
                }
                self.received.append(Received(self.topic, 0, m.routing_key, headers, m.body, payload, time.monotonic()))
                with contextlib.suppress(Exception):  # its connection is gone: it comes again
                    await m.ack()

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()


class Bus:
    """The broker a parameterised test runs on."""

    def __init__(self, name: str, env: Callable[[str], str], service: AvroWireCodec, core: AvroWireCodec) -> None:
        self.name = name
        self._env = env
        self._service_codec = service
        self._core = core
        self._kafka_readers: list[TopicReader] = []
        self._rabbit_readers: list[RabbitTopicReader] = []
        self._kafka_producer: CustomerEvents | None = None
        self._upstream: AvroWireCodec | None = None

    def service_env(self) -> dict[str, str]:
        """What a service process needs to use this bus (besides the registry)."""
        if self.name == "kafka":
            return {"KAFKA_BROKER": self._env("KAFKA_BROKER")}
        return {
            "CAMPAIGN_EVENT_BUS": "rabbitmq",
            "RABBITMQ_URL": self._env("CAMPAIGN_TEST_RABBITMQ_URL"),
            "CAMPAIGN_RABBITMQ_QUEUES_PER_TOPIC": str(QUEUES),
        }

    async def reader(self, topic: str) -> Reading:
        if self.name == "kafka":
            reader = TopicReader(self._env("KAFKA_BROKER"), topic, self._service_codec)
            self._kafka_readers.append(reader)
            return reader
        rabbit = RabbitTopicReader(self._env("CAMPAIGN_TEST_RABBITMQ_URL"), topic, self._service_codec, QUEUES)
        self._rabbit_readers.append(rabbit)
        return await rabbit.start()

    async def created(
        self,
        merchant_id: uuid.UUID,
        customer_id: uuid.UUID | None = None,
        *,
        event_id: uuid.UUID | None = None,
        key: str | None = None,
        correlation_id: str | None = None,
    ) -> uuid.UUID:
        """Produces one customer.created as the Core Service does and waits for the broker's ack."""
        event_id = event_id or uuid.uuid4()
        if self.name == "kafka":
            if self._kafka_producer is None:
                self._kafka_producer = CustomerEvents(self._env("KAFKA_BROKER"), self._core)
            return await self._kafka_producer.created(
                merchant_id, customer_id, event_id=event_id, key=key, correlation_id=correlation_id
            )
        value = await self._core.encode(topics.CUSTOMER_CREATED, created_payload(merchant_id, customer_id, event_id))
        headers = {"correlation_id": correlation_id} if correlation_id else {}
        await self.raw(value, key=key or str(merchant_id), headers=headers, message_id=str(event_id))
        return event_id

    async def event(self, topic: str, payload: dict[str, Any], *, key: str) -> uuid.UUID:
        """Produces one event of an upstream topic (points.recorded as the Points service,
        customer.deleted as the Core Service; their schemas are our reader copies) and waits for
        the broker's ack. The payload's event_id."""
        if self._upstream is None:
            self._upstream = AvroWireCodec(
                registry_client(self._env("CAMPAIGN_SCHEMA_REGISTRY_URL")),
                produces={t: schema_text(t) for t in (topics.POINTS_RECORDED, topics.CUSTOMER_DELETED)},
            )
        value = await self._upstream.encode(topic, payload)
        await self.raw(value, key=key, topic=topic, message_id=str(payload["event_id"]))
        return uuid.UUID(str(payload["event_id"]))

    async def raw(
        self,
        value: bytes,
        *,
        key: str,
        headers: dict[str, str] | None = None,
        message_id: str | None = None,
        topic: str = topics.CUSTOMER_CREATED,
    ) -> None:
        """Produces bytes as an event of `topic` (poison, when they are not a valid record)."""
        if self.name == "kafka":
            if self._kafka_producer is None:
                self._kafka_producer = CustomerEvents(self._env("KAFKA_BROKER"), self._core)
            await self._kafka_producer.raw(value, key=key, headers=list((headers or {}).items()), topic=topic)
            return
        connection = await aio_pika.connect(self._env("CAMPAIGN_TEST_RABBITMQ_URL"), timeout=10)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange, _ = await topology.declare(channel, topic, QUEUES)
            message = aio_pika.Message(
                value,
                headers=dict(headers or {}),
                message_id=message_id,
                correlation_id=(headers or {}).get("correlation_id"),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(message, routing_key=key, mandatory=True, timeout=15)
        finally:
            await connection.close()

    async def start_at_end(self, groups: Mapping[str, str]) -> None:
        """Makes consumers that start later begin at what comes after now: `groups` maps each
        consumed topic to the (new) Kafka consumer group that will read it. On Kafka the group's
        offsets are committed at the topic's end (a new group would otherwise start at the
        earliest offset and wade through every earlier test's events, dead-lettering those of
        merchants its database does not know); on RabbitMQ the topic's queues are purged."""
        if self.name == "kafka":
            await asyncio.to_thread(self._commit_ends, groups)
            return
        connection = await aio_pika.connect(self._env("CAMPAIGN_TEST_RABBITMQ_URL"), timeout=10)
        try:
            channel = await connection.channel()
            for topic in groups:
                await topology.declare(channel, topic, QUEUES)
                for name in topology.queue_names(topic, QUEUES):
                    await (await channel.get_queue(name, ensure=False)).purge()
        finally:
            await connection.close()

    def _commit_ends(self, groups: Mapping[str, str]) -> None:
        for topic, group in groups.items():
            consumer = Consumer(
                {"bootstrap.servers": self._env("KAFKA_BROKER"), "group.id": group, "enable.auto.commit": False}
            )
            try:
                partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
                ends = [
                    TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                    for p in partitions
                ]
                if ends:  # a topic not made yet has no backlog
                    consumer.commit(offsets=ends, asynchronous=False)
            finally:
                consumer.close()

    def kill(self) -> None:
        dependency_sh(self.name, f"{self.name}_kill")

    def start_again(self) -> None:
        dependency_sh(self.name, f"{self.name}_start_again")

    async def close_readers(self) -> None:
        """Readers end with their test (on RabbitMQ a reader left open would stay the queues'
        single active consumer, and the next test's reader would wait as a standby)."""
        for reader in self._kafka_readers:
            reader.close()
        self._kafka_readers.clear()
        for rabbit in self._rabbit_readers:
            await rabbit.close()
        self._rabbit_readers.clear()

    async def close(self) -> None:
        await self.close_readers()
        for reader in self._kafka_readers:
            reader.close()
        self._kafka_readers.clear()
        for rabbit in self._rabbit_readers:
            await rabbit.close()
        self._rabbit_readers.clear()
        if self._kafka_producer is not None:
            self._kafka_producer.close()
            self._kafka_producer = None
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None
