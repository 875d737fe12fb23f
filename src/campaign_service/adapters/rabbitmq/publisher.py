"""EventPublisher on RabbitMQ: outbox messages as Confluent-framed Avro (the same bytes as on
Kafka), to the topic's exchange with the event key as routing key, persistent, each confirmed by
the broker before `publish` reports it delivered (the relay marks the outbox row only then)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange

from campaign_service.adapters.kafka.wire import AvroWireCodec, UnencodablePayload
from campaign_service.adapters.rabbitmq import topology
from campaign_service.adapters.rabbitmq.connection import LazyChannel, RabbitUnavailable
from campaign_service.adapters.schema_registry import RegistryRejected, RegistryUnavailable
from campaign_service.domain.events import OutboxMessage


def amqp_message(message: OutboxMessage, body: bytes) -> aio_pika.Message:
    """The outbox headers (correlation_id, cause_event_id, traceparent, ...) plus event_id and
    event_type as headers, as on Kafka; event_id is also the message id and the correlation id
    the correlation-id property, so AMQP tooling sees them without reading headers."""
    headers: dict[str, str] = {**message.headers, "event_id": str(message.event_id), "event_type": message.topic}
    return aio_pika.Message(
        body,
        headers=dict(headers),
        message_id=str(message.event_id),
        correlation_id=message.headers.get("correlation_id"),
        type=message.topic,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class RabbitEventPublisher:
    def __init__(
        self, channel: LazyChannel, codec: AvroWireCodec, *, queues_per_topic: int, confirm_timeout_s: float
    ) -> None:
        self._channel = channel
        self._codec = codec
        self._queues = queues_per_topic
        self._wait_s = confirm_timeout_s
        self._exchanges: dict[str, tuple[AbstractChannel, AbstractExchange]] = {}

    @property
    def broker_down(self) -> bool:
        return self._channel.down

    async def _exchange(self, topic: str) -> AbstractExchange:
        channel = await self._channel.get()
        made = self._exchanges.get(topic)
        if made is None or made[0] is not channel:  # declared on an earlier connection: again
            exchange, _ = await topology.declare(channel, topic, self._queues)
            made = self._exchanges[topic] = (channel, exchange)
        return made[1]

    async def publish(self, batch: Sequence[OutboxMessage]) -> list[str | None]:
        results: list[str | None] = [None] * len(batch)
        pending = await self._send(batch, results)
        if pending:
            await asyncio.wait([t for _, t in pending], timeout=self._wait_s)
        broken = False
        for i, task in pending:
            if not task.done():
                task.cancel()
                results[i] = "no publisher confirm in time"
                broken = True
                continue
            error = task.exception() if not task.cancelled() else asyncio.CancelledError()
            if error is not None:
                # PublishError: returned as unroutable; DeliveryError: nacked; anything else: the
                # connection or channel broke (reconnect before the next batch).
                results[i] = f"{type(error).__name__}: {error}"[:300]
                broken = broken or not isinstance(error, aio_pika.exceptions.DeliveryError)
        if broken:
            await self._channel.reset()
        return results

    async def _send(
        self, batch: Sequence[OutboxMessage], results: list[str | None]
    ) -> list[tuple[int, asyncio.Task[object]]]:
        """Starts the publishes in order; errors before sending go into `results`."""
        pending: list[tuple[int, asyncio.Task[object]]] = []
        for i, message in enumerate(batch):
            try:
                body = await self._codec.encode(message.topic, message.payload)
                exchange = await self._exchange(message.topic)
            except RegistryUnavailable as exc:
                results[i:] = [str(exc)] * (len(batch) - i)  # every later message needs it too
                break
            except (UnencodablePayload, RegistryRejected) as exc:
                results[i] = str(exc)
                continue
            except (RabbitUnavailable, aio_pika.exceptions.AMQPError, OSError) as exc:
                results[i:] = [str(exc) or type(exc).__name__] * (len(batch) - i)
                await self._channel.reset()
                break
            # Tasks start in order and aiormq writes each publish under the channel's lock
            # (FIFO): the broker gets them in outbox order, so per-key order holds.
            publish = exchange.publish(amqp_message(message, body), routing_key=message.key, mandatory=True)
            pending.append((i, asyncio.ensure_future(publish)))
        return pending

    async def close(self) -> None:
        await self._channel.close()
