"""The event side: the outbox relay (the bus's publisher, schema registry client, LISTEN connection)
and the consumers, on the bus CAMPAIGN_EVENT_BUS chooses (Kafka or RabbitMQ)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import asyncpg
import structlog
from opentelemetry.trace import Tracer

from campaign_service import topics
from campaign_service.adapters.kafka.consumer import KafkaEventSubscriber, consumer_config
from campaign_service.adapters.kafka.producer import KafkaProducer, producer_config
from campaign_service.adapters.kafka.publisher import KafkaEventPublisher
from campaign_service.adapters.kafka.wire import AvroWireCodec
from campaign_service.adapters.postgres.outbox import PgOutbox, PgOutboxListener
from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.adapters.postgres.progression_reads import PgProgressionApi
from campaign_service.adapters.postgres.tenant import PgUnitOfWork
from campaign_service.adapters.postgres.tier_change_jobs import PgTierChangeEngine
from campaign_service.adapters.rabbitmq.connection import LazyChannel
from campaign_service.adapters.rabbitmq.consumer import RabbitEventSubscriber
from campaign_service.adapters.rabbitmq.publisher import RabbitEventPublisher
from campaign_service.adapters.redis.client import RedisBreaker, RedisClient
from campaign_service.adapters.redis.processed import RedisProcessedEvents
from campaign_service.adapters.schema_registry import RegistryRejected, RegistryUnavailable, registry_client
from campaign_service.api.http import Check
from campaign_service.backoff import Backoff, supervise
from campaign_service.config import Settings
from campaign_service.events.activator import Activator
from campaign_service.events.customer_created import CustomerCreatedHandler
from campaign_service.events.customer_deleted import CustomerDeletedHandler
from campaign_service.events.points_recorded import PointsRecordedHandler
from campaign_service.events.ports import BatchHandler, EventPublisher, EventSubscriber
from campaign_service.events.relay import OutboxRelay, RelaySettings
from campaign_service.events.scheduler import DeadlineScheduler, SchedulerSettings
from campaign_service.events.tier_change_jobs import JobRunnerSettings, TierChangeJobRunner
from campaign_service.events.tracing import TracedPublisher, traced_batches
from campaign_service.service.downgrade_warnings import DowngradeWarnings
from campaign_service.service.scheduled import ScheduledChanges
from campaign_service.service.scheduled_ports import ScheduledStore
from campaign_service.wiring import lifetime

log = structlog.get_logger(__name__)


class Bus(Protocol):
    """The chosen event bus, as the composition root needs it (selected by CAMPAIGN_EVENT_BUS;
    nothing outside adapters/ and wiring/ knows which)."""

    @property
    def name(self) -> str:
        """The readiness check's name and the spans' messaging.system."""
        ...

    @property
    def publisher(self) -> EventPublisher: ...

    def subscriber(self, topic: str, dead_letter_topic: str, group: str, batch_size: int) -> EventSubscriber: ...
    def down(self) -> bool: ...
    async def close(self, flush_s: float) -> None: ...


@dataclass
class KafkaBus:
    settings: Settings
    broker: str
    codec: AvroWireCodec
    producer: KafkaProducer
    publisher: EventPublisher
    name: str = "kafka"

    @classmethod
    def build(cls, settings: Settings, broker: str, codec: AvroWireCodec) -> KafkaBus:
        producer = KafkaProducer(
            producer_config(
                broker,
                client_id=settings.kafka_client_id,
                delivery_timeout_ms=settings.kafka_delivery_timeout_ms,
                linger_ms=settings.kafka_linger_ms,
            )
        )
        delivery_s = settings.kafka_delivery_timeout_ms / 1000
        return cls(
            settings, broker, codec, producer, KafkaEventPublisher(producer, codec, delivery_timeout_s=delivery_s)
        )

    def subscriber(self, topic: str, dead_letter_topic: str, group: str, batch_size: int) -> EventSubscriber:
        config = consumer_config(
            self.broker,
            group_id=group,
            client_id=self.settings.kafka_client_id,
            session_timeout_ms=self.settings.kafka_session_timeout_ms,
        )
        return KafkaEventSubscriber(
            config,
            topic,
            self.codec.reader(topic),
            self.producer,
            dead_letter_topic,
            batch_size=batch_size,
            retry=Backoff(0.2, 5.0),
        )

    def down(self) -> bool:
        return self.producer.broker_down

    async def close(self, flush_s: float) -> None:
        await self.producer.close(flush_s)  # flush: nothing enqueued is dropped on a clean stop


@dataclass
class RabbitBus:
    """RabbitMQ (adapters/rabbitmq): a topic's queues stand for its partitions and its one
    queue set for the consumer group (the group name is not used)."""

    settings: Settings
    url: str
    codec: AvroWireCodec
    channel: LazyChannel
    publisher: RabbitEventPublisher
    name: str = "rabbitmq"

    @classmethod
    def build(cls, settings: Settings, url: str, codec: AvroWireCodec) -> RabbitBus:
        channel = LazyChannel(url)
        publisher = RabbitEventPublisher(
            channel,
            codec,
            queues_per_topic=settings.rabbitmq_queues_per_topic,
            confirm_timeout_s=settings.kafka_delivery_timeout_ms / 1000,
        )
        return cls(settings, url, codec, channel, publisher)

    def subscriber(self, topic: str, dead_letter_topic: str, group: str, batch_size: int) -> EventSubscriber:
        del dead_letter_topic, group  # named by the topology (topic + ".dlq"), one queue set per topic
        return RabbitEventSubscriber(
            self.url,
            topic,
            self.codec.reader(topic),
            queues_per_topic=self.settings.rabbitmq_queues_per_topic,
            batch_size=batch_size,
            retry=Backoff(0.2, 5.0),
        )

    def down(self) -> bool:
        return self.publisher.broker_down

    async def close(self, flush_s: float) -> None:
        del flush_s  # nothing is queued locally: each publish waited for its confirm
        await self.channel.close()


def build_bus(settings: Settings, codec: AvroWireCodec) -> Bus:
    address, _ = settings.event_bus_address()
    if settings.event_bus == "rabbitmq":
        return RabbitBus.build(settings, address, codec)
    return KafkaBus.build(settings, address, codec)


@dataclass
class Relay:
    """The outbox relay with what it owns: the bus (producer), schema registry client, LISTEN connection."""

    relay: OutboxRelay
    listener: PgOutboxListener
    bus: Bus
    codec: AvroWireCodec

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.listener.run(self.relay.wake, stop))
            tasks.create_task(self.relay.run(stop))

    async def close(self, flush_s: float = 10.0) -> None:
        await self.bus.close(flush_s)
        await self.codec.close()

    async def bus_check(self) -> str | None:
        if self.relay.last_error:
            return f"publishing fails: {self.relay.last_error}"[:200]
        return "all brokers down" if self.bus.down() else None


def build_relay(
    settings: Settings, pool: asyncpg.Pool[asyncpg.Record], listen_dsn: str, tracer: Tracer | None = None
) -> Relay:
    _, registry_url = settings.event_bus_address()
    delivery_s = settings.kafka_delivery_timeout_ms / 1000
    codec = AvroWireCodec(registry_client(registry_url))
    bus = build_bus(settings, codec)
    publisher = bus.publisher
    if tracer is not None:
        publisher = TracedPublisher(publisher, tracer, system=bus.name)
    relay = OutboxRelay(
        PgOutbox(pool, claim_hold_s=delivery_s + 15, shards_per_claim=settings.outbox_shards_per_claim),
        publisher,
        RelaySettings(
            batch_size=settings.outbox_batch_size,
            concurrency=settings.outbox_concurrency,
            poll_interval_s=settings.outbox_poll_interval_s,
            retention_s=settings.outbox_retention_hours * 3600,
            purge_interval_s=settings.outbox_purge_interval_s,
            processed_retention_s=settings.processed_retention_hours * 3600,
            backoff_max_s=settings.relay_backoff_max_s,
        ),
    )
    return Relay(relay, PgOutboxListener(listen_dsn), bus, codec)


async def register_schemas(codec: AvroWireCodec) -> None:
    """Registers the schemas of what we produce now so a registry problem shows at start-up
    (publishing retries anyway). The Core Service's customer.created subject is not ours to write."""
    try:
        await asyncio.wait_for(codec.register_all(), 10)
    except (RegistryUnavailable, RegistryRejected, TimeoutError) as exc:
        log.warning("schema registration failed; publishing retries it", error=str(exc))


@dataclass(frozen=True)
class Consumer:
    """One consumed topic: its subscriber and the batch handler it feeds."""

    name: str
    subscriber: EventSubscriber
    handler: BatchHandler


@dataclass
class EventPipeline:
    """The relay and the consumers (customer.created, points.recorded, customer.deleted) running
    in the service process."""

    relay: Relay
    consumers: list[Consumer]

    def checks(self) -> list[Check]:
        return [Check(self.relay.bus.name, self.relay.bus_check, critical=False)]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Consumers and relay run while the block runs. Leaving it drains them, in this order:
        the consumers finish the batch in hand, commit their offsets and leave their groups; then
        the relay stops and makes one last pass for the rows the consumers just wrote."""
        stop_consumer, stop_relay = asyncio.Event(), asyncio.Event()
        consumers = [
            asyncio.create_task(
                supervise(c.name, functools.partial(c.subscriber.run, c.handler, stop_consumer), stop_consumer),
                name=c.name,
            )
            for c in self.consumers
        ]
        relay = functools.partial(self.relay.run, stop_relay)
        relay_task = asyncio.create_task(supervise("relay", relay, stop_relay), name="relay")
        try:
            yield
        finally:
            stop_consumer.set()
            for task in consumers:  # told together; each waited for within the same 3 s
                await lifetime.bounded(task.get_name(), functools.partial(_stopped, task, 3.0))
            stop_relay.set()
            await lifetime.bounded("relay", functools.partial(_stopped, relay_task, 1.5))
            await lifetime.bounded("relay drain", functools.partial(self.relay.relay.drain, timeout_s=1.5))


async def _stopped(task: asyncio.Task[None], timeout_s: float) -> None:
    """Waits for a task told to stop; cancels it if it does not within `timeout_s`."""
    await asyncio.wait([task], timeout=timeout_s)
    if not task.done():
        log.warning("task did not stop in time; cancelling", task=task.get_name())
        task.cancel()
        await asyncio.wait([task])
    elif not task.cancelled() and task.exception() is not None:
        log.error("task failed", task=task.get_name(), error=repr(task.exception()))


@contextlib.asynccontextmanager
async def pipeline(
    settings: Settings,
    relay_pool: asyncpg.Pool[asyncpg.Record],
    listen_dsn: str,
    redis: RedisClient | None,
    breaker: RedisBreaker | None,
    pool: asyncpg.Pool[asyncpg.Record],
    tracer: Tracer | None = None,
) -> AsyncIterator[EventPipeline]:
    """The relay and the consumers, built (the producer's thread runs from here) with the schemas
    registered; leaving flushes the producer (bounded) and closes the registry client. The relay
    runs on its own role's pool (`relay_pool`, LISTEN on `listen_dsn`), the consumers on the
    service's `pool`. `redis`
    (the service's client, with its breaker) backs the processed-events fast path; with a
    `tracer` (tracing on), publishing and consuming make spans (events/tracing.py)."""
    relay = build_relay(settings, relay_pool, listen_dsn, tracer)
    try:

        def consumer(name: str, topic: str, dlq: str, group: str, batch_size: int, handler: BatchHandler) -> Consumer:
            subscriber = relay.bus.subscriber(topic, dlq, group, batch_size)
            if tracer is not None:
                handler = traced_batches(handler, tracer, system=relay.bus.name)
            return Consumer(name, subscriber, handler)

        group = settings.kafka_consumer_group
        processed = RedisProcessedEvents(redis, breaker) if redis is not None and breaker is not None else None
        created = CustomerCreatedHandler(PgUnitOfWork(pool), processed, concurrency=settings.consumer_concurrency)
        # No Redis fast path for points: the database dedupes each batch in one INSERT anyway; the
        # fast path would add two Redis round trips of up to a batch of keys each.
        points = PointsRecordedHandler(PgProgression(pool), concurrency=settings.points_concurrency)
        deleted = CustomerDeletedHandler(PgProgressionApi(pool))
        consumers = [
            consumer(
                "consumer",
                topics.CUSTOMER_CREATED,
                topics.CUSTOMER_CREATED_DLQ,
                group,
                settings.consumer_batch_size,
                created.batch,
            ),
            consumer(
                "points",
                topics.POINTS_RECORDED,
                topics.POINTS_RECORDED_DLQ,
                f"{group}.points",
                settings.points_batch_size,
                points.batch,
            ),
            consumer(
                "erasure",
                topics.CUSTOMER_DELETED,
                topics.CUSTOMER_DELETED_DLQ,
                f"{group}.erasure",
                settings.consumer_batch_size,
                deleted.batch,
            ),
        ]
        await register_schemas(relay.codec)
        yield EventPipeline(relay, consumers)
    finally:
        await lifetime.bounded("event producer", functools.partial(relay.close, flush_s=2.0))


def scheduler(settings: Settings, pool: asyncpg.Pool[asyncpg.Record]) -> contextlib.AbstractAsyncContextManager[object]:
    """The deadline scheduler (tier downgrades), supervised, while the block runs, unless switched
    off; leaving cancels it (a chunk in flight rolls back and is claimed again by the next pass)."""
    if not settings.scheduler_interval_s:
        return contextlib.nullcontext()
    progression = PgProgression(pool)
    deadlines = DeadlineScheduler(
        progression,
        progression,
        SchedulerSettings(
            chunk_size=settings.scheduler_chunk_size,
            interval_s=settings.scheduler_interval_s,
            concurrency=settings.scheduler_concurrency,
        ),
    )
    stop = asyncio.Event()
    run = functools.partial(deadlines.run, stop)
    return lifetime.background("deadline-scheduler", supervise("scheduler", run, stop))


def tier_change_jobs(
    settings: Settings, pool: asyncpg.Pool[asyncpg.Record]
) -> contextlib.AbstractAsyncContextManager[object]:
    """The re-assessment job runner (issue 14), supervised, while the block runs, unless switched
    off; leaving cancels it (a chunk in flight rolls back; the next runner resumes at the cursor)."""
    if not settings.tier_change_jobs_interval_s:
        return contextlib.nullcontext()
    runner = TierChangeJobRunner(
        PgTierChangeEngine(pool),
        JobRunnerSettings(
            chunk_size=settings.tier_change_jobs_chunk_size, interval_s=settings.tier_change_jobs_interval_s
        ),
    )
    stop = asyncio.Event()
    run = functools.partial(runner.run, stop)
    return lifetime.background("tier-change-jobs", supervise("tier-change-jobs", run, stop))


def downgrade_warnings(
    settings: Settings, pool: asyncpg.Pool[asyncpg.Record]
) -> contextlib.AbstractAsyncContextManager[object]:
    """vip_tier.downgrade_scheduled warnings and the due-backlog gauges, on the scheduler's
    interval (off with it), while the block runs."""
    if not settings.scheduler_interval_s:
        return contextlib.nullcontext()
    warnings = DowngradeWarnings(PgProgressionApi(pool), interval_s=settings.scheduler_interval_s)
    stop = asyncio.Event()
    run = functools.partial(warnings.run, stop)
    return lifetime.background("downgrade-warnings", supervise("downgrade-warnings", run, stop))


def activator(
    settings: Settings, changes: ScheduledChanges, store: ScheduledStore
) -> contextlib.AbstractAsyncContextManager[object]:
    """The activator of scheduled tier/programme changes, supervised, while the block runs, unless
    switched off; leaving cancels it (an activation in flight rolls back and is claimed again)."""
    if not settings.activator_poll_s:
        return contextlib.nullcontext()
    stop = asyncio.Event()
    run = functools.partial(Activator(changes, store, settings.activator_poll_s).run, stop)
    return lifetime.background("activator", supervise("activator", run, stop))
