"""The Kafka subscriber on the real broker, on topics of its own: order, retry of failed handling,
dead letters, and offsets committed only for what was handled; and driving the real
customer.created batch handler."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # the class confluent_kafka.admin re-exports without declaring it

from campaign_service import topics
from campaign_service.adapters.kafka.consumer import KafkaEventSubscriber, consumer_config
from campaign_service.adapters.kafka.producer import KafkaProducer, producer_config
from campaign_service.adapters.kafka.wire import AvroWireCodec
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.backoff import Backoff
from campaign_service.events.customer_created import CustomerCreatedHandler
from campaign_service.events.key_order import one_by_one
from campaign_service.events.ports import InboundEvent, Rejected
from tests.conftest import required_env
from tests.kafka_support import TopicReader

pytestmark = pytest.mark.kafka


@pytest.fixture
async def own_topics() -> tuple[str, str]:
    """A one-partition source topic and its dead-letter topic, new for this test."""
    name = f"test.customer.created.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": required_env("KAFKA_BROKER")})
    for future in admin.create_topics([NewTopic(name, 1, 1), NewTopic(f"{name}.dlq", 1, 1)]).values():
        await asyncio.to_thread(future.result, 30)
    # Created is not yet led: a reader asking for watermarks at once got NOT_LEADER_FOR_PARTITION.
    for _ in range(100):
        found = (await asyncio.to_thread(admin.list_topics, timeout=10)).topics
        if all(t in found and all(p.leader >= 0 for p in found[t].partitions.values()) for t in (name, f"{name}.dlq")):
            break
        await asyncio.sleep(0.1)
    return name, f"{name}.dlq"


@pytest.fixture
async def dlq_producer() -> AsyncIterator[KafkaProducer]:
    producer = KafkaProducer(
        producer_config(required_env("KAFKA_BROKER"), client_id="test-dlq", delivery_timeout_ms=10_000, linger_ms=0)
    )
    yield producer
    await producer.close()


async def produce(topic: str, values: list[bytes], keys: list[bytes] | None = None) -> None:
    producer = Producer({"bootstrap.servers": required_env("KAFKA_BROKER")})
    for value, key in zip(values, keys or [b"same-key"] * len(values), strict=True):
        producer.produce(topic, value, key)
    assert await asyncio.to_thread(producer.flush, 15) == 0


async def run_until(
    subscriber: KafkaEventSubscriber, handler: Callable[[InboundEvent], Any], done: Callable[[], bool]
) -> None:
    """Runs the subscriber with a per-event handler (each key in order, keys concurrently)."""
    stop = asyncio.Event()
    task = asyncio.create_task(subscriber.run(one_by_one(handler, concurrency=8), stop))
    try:
        for _ in range(300):
            if done() or task.done():
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert done()


def committed(group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": required_env("KAFKA_BROKER"), "group.id": group})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        consumer.close()


async def test_failed_handling_is_retried_in_order_and_offsets_follow_the_handled(
    own_topics: tuple[str, str], avro_codec: AvroWireCodec, core_codec: AvroWireCodec, dlq_producer: KafkaProducer
) -> None:
    source, dlq = own_topics
    ids = [str(uuid.uuid4()) for _ in range(3)]
    values = [
        await core_codec.encode(
            topics.CUSTOMER_CREATED,
            {"event_id": str(i), "customer_id": str(uuid.uuid4()), "merchant_id": str(uuid.uuid4())},
        )
        for i in ids
    ]
    await produce(source, values)
    group = f"test-{uuid.uuid4().hex[:8]}"
    config = consumer_config(required_env("KAFKA_BROKER"), group_id=group, client_id="test")
    subscriber = KafkaEventSubscriber(
        config, source, avro_codec.reader(topics.CUSTOMER_CREATED), dlq_producer, dlq, retry=Backoff(0.05, 0.2)
    )
    calls: list[str] = []

    async def flaky(event: InboundEvent) -> None:
        calls.append(event.payload["event_id"])
        if event.payload["event_id"] == ids[1] and calls.count(ids[1]) <= 2:
            raise ConnectionError("database unreachable")

    await run_until(subscriber, flaky, lambda: ids[2] in calls)
    assert calls == [ids[0], ids[1], ids[1], ids[1], ids[2]]
    assert await asyncio.to_thread(committed, group, source) == 3


async def test_a_failing_key_holds_back_only_itself_and_the_commit(
    own_topics: tuple[str, str], avro_codec: AvroWireCodec, core_codec: AvroWireCodec, dlq_producer: KafkaProducer
) -> None:
    source, dlq = own_topics
    ids = [str(uuid.uuid4()) for _ in range(4)]  # keys a, b, a, b
    values = [
        await core_codec.encode(
            topics.CUSTOMER_CREATED,
            {"event_id": str(i), "customer_id": str(uuid.uuid4()), "merchant_id": str(uuid.uuid4())},
        )
        for i in ids
    ]
    await produce(source, values, [b"a", b"b", b"a", b"b"])
    group = f"test-{uuid.uuid4().hex[:8]}"
    config = consumer_config(required_env("KAFKA_BROKER"), group_id=group, client_id="test")
    subscriber = KafkaEventSubscriber(
        config, source, avro_codec.reader(topics.CUSTOMER_CREATED), dlq_producer, dlq, retry=Backoff(0.3, 0.3)
    )
    succeeded: list[str] = []
    first_a_attempts = 0

    async def fail_a_once(event: InboundEvent) -> None:
        nonlocal first_a_attempts
        if event.payload["event_id"] == ids[0]:
            first_a_attempts += 1
            if first_a_attempts == 1:
                raise ConnectionError("database unreachable")
        succeeded.append(event.payload["event_id"])

    await run_until(subscriber, fail_a_once, lambda: ids[2] in succeeded)
    a_order = [i for i in succeeded if i in (ids[0], ids[2])]
    assert a_order == [ids[0], ids[2]], "key a stays in order across the retry"
    assert succeeded.index(ids[1]) < succeeded.index(ids[0]), "key b did not wait for key a's retry"
    assert await asyncio.to_thread(committed, group, source) == 4


async def test_rejected_event_is_dead_lettered_with_its_reason_and_passed(
    own_topics: tuple[str, str], avro_codec: AvroWireCodec, core_codec: AvroWireCodec, dlq_producer: KafkaProducer
) -> None:
    source, dlq = own_topics
    good = await core_codec.encode(
        topics.CUSTOMER_CREATED,
        {"event_id": str(uuid.uuid4()), "customer_id": str(uuid.uuid4()), "merchant_id": str(uuid.uuid4())},
    )
    reader = TopicReader(required_env("KAFKA_BROKER"), dlq, avro_codec)
    await produce(source, [good, b"junk", good])
    group = f"test-{uuid.uuid4().hex[:8]}"
    config = consumer_config(required_env("KAFKA_BROKER"), group_id=group, client_id="test")
    subscriber = KafkaEventSubscriber(config, source, avro_codec.reader(topics.CUSTOMER_CREATED), dlq_producer, dlq)
    seen: list[str] = []

    async def refuse_first(event: InboundEvent) -> None:
        seen.append(str(event.payload["event_id"]))
        if len(seen) == 1:
            raise Rejected("unknown_merchant", "not provisioned")

    try:
        await run_until(subscriber, refuse_first, lambda: len(seen) == 2)
        dead = await reader.wait_for(lambda got: len(got) >= 2)
    finally:
        reader.close()
    assert [d.headers["dlq_reason"] for d in dead] == ["unknown_merchant", "undecodable"]
    assert [d.headers["dlq_source"] for d in dead] == [f"{source}/0/0", f"{source}/0/1"]
    assert dead[0].value == good
    assert await asyncio.to_thread(committed, group, source) == 3


async def test_the_subscriber_hands_batches_to_the_handler_and_dead_letters_only_the_bad_one(
    own_topics: tuple[str, str],
    avro_codec: AvroWireCodec,
    core_codec: AvroWireCodec,
    dlq_producer: KafkaProducer,
    app_pool: Any,
    merchant_with_default: Any,
    superuser_conn: Any,
) -> None:
    source, dlq = own_topics
    a, b = await merchant_with_default(), await merchant_with_default()
    ids = [uuid.uuid4() for _ in range(3)]
    payloads = [
        {"event_id": str(ids[0]), "customer_id": str(uuid.uuid4()), "merchant_id": str(a)},
        {"event_id": str(ids[1]), "customer_id": str(uuid.uuid4()), "merchant_id": str(uuid.uuid4())},  # unknown
        {"event_id": str(ids[2]), "customer_id": str(uuid.uuid4()), "merchant_id": str(b)},
    ]
    values = [await core_codec.encode(topics.CUSTOMER_CREATED, p) for p in payloads]
    producer = Producer({"bootstrap.servers": required_env("KAFKA_BROKER")})
    for value in [*values, values[0]]:  # and the first one again
        producer.produce(source, value, b"one-key")
    assert await asyncio.to_thread(producer.flush, 15) == 0

    group = f"test-{uuid.uuid4().hex[:8]}"
    config = consumer_config(required_env("KAFKA_BROKER"), group_id=group, client_id="test")
    subscriber = KafkaEventSubscriber(
        config, source, avro_codec.reader(topics.CUSTOMER_CREATED), dlq_producer, dlq, batch_size=100
    )
    reader = TopicReader(required_env("KAFKA_BROKER"), dlq, avro_codec)
    stop = asyncio.Event()
    task = asyncio.create_task(subscriber.run(CustomerCreatedHandler(PgUnitOfWork(app_pool)).batch, stop))
    try:
        dead = await reader.wait_for(lambda got: len(got) >= 1)
        for _ in range(100):
            if await asyncio.to_thread(committed, group, source) == 4:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        reader.close()
    assert [(d.headers["dlq_reason"], d.headers["dlq_source"]) for d in dead] == [("unknown_merchant", f"{source}/0/1")]
    assert await asyncio.to_thread(committed, group, source) == 4
    for merchant, cause in ((a, ids[0]), (b, ids[2])):
        rows = await superuser_conn.fetch(
            "SELECT cause_event_id FROM customer_tier_history WHERE merchant_id = $1", merchant
        )
        assert [r["cause_event_id"] for r in rows] == [cause]
