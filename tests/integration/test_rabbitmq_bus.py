"""The RabbitMQ adapters on the real broker: per-key order through publisher, consistent-hash
exchange, single-active-consumer queues and the subscriber's retry of a failed message; and a
publish the broker did not confirm is reported failed (so the relay does not mark it); an
unroutable one in a batch is reported failed on its own (the publisher writes a batch in one go
and matches each confirm and return to its message)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import aio_pika
import pytest

from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroWireCodec, schema_text
from campaign_service.adapters.rabbitmq import topology
from campaign_service.adapters.rabbitmq.connection import LazyChannel
from campaign_service.adapters.rabbitmq.consumer import RabbitEventSubscriber
from campaign_service.adapters.rabbitmq.publisher import RabbitEventPublisher
from campaign_service.adapters.schema_registry import registry_client
from campaign_service.backoff import Backoff
from campaign_service.domain.events import OutboxMessage, tier_updated
from campaign_service.events.ports import Deferred, InboundEvent, Outcome
from tests.conftest import required_env

pytestmark = pytest.mark.rabbitmq


def messages(topic: str, keys: int, per_key: int) -> list[OutboxMessage]:
    """`keys` x `per_key` updates, interleaved across keys, on `topic`."""
    merchant = uuid.uuid4()
    made = []
    for n in range(per_key):
        for k in range(keys):
            m = tier_updated(
                event_id=uuid.uuid4(),
                merchant_id=merchant,
                tier_id=f"t{k}",
                updated_fields=[f"n{n}"],
                updated_at=datetime.now(UTC),
                actor="test",
                correlation_id=f"c{n}",
            )
            made.append(OutboxMessage(m.event_id, m.merchant_id, topic, m.key, m.payload, m.headers))
    return made


async def test_per_key_order_holds_through_a_failed_message_handled_again() -> None:
    topic = f"test.order.{uuid.uuid4().hex[:8]}"
    codec = AvroWireCodec(
        registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")),
        produces={topic: schema_text(topics.VIP_TIER_UPDATED)},
    )
    url = required_env("CAMPAIGN_TEST_RABBITMQ_URL")
    channel = LazyChannel(url)
    publisher = RabbitEventPublisher(channel, codec, queues_per_topic=3, confirm_timeout_s=15)
    sent = messages(topic, keys=4, per_key=30)
    subscriber = RabbitEventSubscriber(
        url, topic, codec.reader(None), queues_per_topic=3, batch_size=16, retry=Backoff(0.05, 0.2)
    )
    handled: dict[str, list[str]] = {}
    poisoned = str(sent[4 * 3].event_id)  # the 4th event of the first key fails twice
    failures = 0

    async def handler(batch: Sequence[InboundEvent]) -> list[Outcome]:
        nonlocal failures
        outcomes: list[Outcome] = []
        failed_keys: set[str | None] = set()
        for event in batch:
            if event.key in failed_keys:
                outcomes.append(Deferred())
                continue
            if event.payload["event_id"] == poisoned and failures < 2:
                failures += 1
                failed_keys.add(event.key)
                outcomes.append(RuntimeError("transient"))
                continue
            handled.setdefault(str(event.key), []).append(str(event.payload["event_id"]))
            outcomes.append(None)
        return outcomes

    stop = asyncio.Event()
    consuming = asyncio.create_task(subscriber.run(handler, stop))
    try:
        # Published in two batches: each reports every message confirmed.
        assert await publisher.publish(sent[:60]) == [None] * 60
        assert await publisher.publish(sent[60:]) == [None] * 60
        for _ in range(300):
            if sum(len(v) for v in handled.values()) >= len(sent):
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(consuming, 10)
        await publisher.close()
        await codec.close()
    assert failures == 2
    expected: dict[str, list[str]] = {}
    for m in sent:
        expected.setdefault(m.key, []).append(str(m.event_id))
    assert handled == expected, "every event once, each key in publish order"


async def test_a_publish_the_broker_never_confirmed_is_reported_failed() -> None:
    codec = AvroWireCodec(registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")))
    publisher = RabbitEventPublisher(
        LazyChannel("amqp://guest:guest@127.0.0.1:1/", connect_timeout_s=2),
        codec,
        queues_per_topic=3,
        confirm_timeout_s=5,
    )
    try:
        results = await publisher.publish(messages(topics.VIP_TIER_UPDATED, keys=2, per_key=2))
    finally:
        await publisher.close()
        await codec.close()
    assert len(results) == 4
    assert all(r is not None and "unreachable" in r for r in results), results
    assert publisher.broker_down


async def test_an_unroutable_message_in_a_batch_fails_alone_and_the_others_are_confirmed() -> None:
    routed, lost = f"test.routed.{uuid.uuid4().hex[:8]}", f"test.unroutable.{uuid.uuid4().hex[:8]}"
    codec = AvroWireCodec(
        registry_client(required_env("CAMPAIGN_SCHEMA_REGISTRY_URL")),
        produces={routed: schema_text(topics.VIP_TIER_UPDATED), lost: schema_text(topics.VIP_TIER_UPDATED)},
    )
    url = required_env("CAMPAIGN_TEST_RABBITMQ_URL")
    publisher = RabbitEventPublisher(LazyChannel(url), codec, queues_per_topic=2, confirm_timeout_s=15)
    admin = await aio_pika.connect(url, timeout=10)
    try:
        # Both topics declared by a first publish; then the queues of one go: its exchange routes nowhere.
        first = [*messages(routed, keys=1, per_key=1), *messages(lost, keys=1, per_key=1)]
        assert await publisher.publish(first) == [None, None]
        channel = await admin.channel()
        for name in topology.queue_names(lost, 2):
            await channel.queue_delete(name)
        ok, bad = messages(routed, keys=3, per_key=100), messages(lost, keys=1, per_key=1)
        batch = [*ok[:150], *bad, *ok[150:]]
        results = await publisher.publish(batch)
        assert results[:150] == [None] * 150
        assert results[150] is not None
        assert "PublishError" in results[150]
        assert results[151:] == [None] * 150
        # The channel stays usable: the next batch goes out and is confirmed.
        assert await publisher.publish(messages(routed, keys=2, per_key=5)) == [None] * 10
        counts = [
            (await channel.declare_queue(name, passive=True)).declaration_result.message_count or 0
            for name in topology.queue_names(routed, 2)
        ]
        assert sum(counts) == 1 + 300 + 10
    finally:
        channel = await admin.channel()
        for topic in (routed, lost):
            for name in [*topology.queue_names(topic, 2), topology.dead_letters(topic)]:
                await channel.queue_delete(name)
            await channel.exchange_delete(topic)
            await channel.exchange_delete(topology.dead_letters(topic))
        await admin.close()
        await publisher.close()
        await codec.close()
