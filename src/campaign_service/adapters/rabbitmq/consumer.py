"""EventSubscriber on RabbitMQ: the topic's queues (topology.py), manual acks, dead letters.

It takes what is ready (up to `batch_size` messages, never waiting for a full batch) from all the
topic's queues it is the active consumer of and hands the decoded events to the batch handler in
one call, as the Kafka subscriber does. A message is acknowledged only when its outcome was None
(its database transaction committed) or once its dead letter was confirmed by the broker
(undecodable, or Rejected by the handler). A message with any other outcome is kept, unacked, and
handed to the handler again, after a bounded backoff (campaign_retries_total), before every
message that came after it: the handler keeps the order of each key within a batch, so the order
of a key holds across retries (nack-and-requeue would not do: a message of the same key already
on its way to us would overtake the requeued one). If the process dies, the broker requeues every
unacked message in queue order and another instance's consumer becomes the active one.

A broken connection ends `run` with an exception; the caller (backoff.supervise) runs it again,
which reconnects, and the broker has already requeued what was unacked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from campaign_service import metrics
from campaign_service.adapters.kafka.consumer import DLQ_DETAIL, DLQ_REASON, DLQ_SOURCE
from campaign_service.adapters.kafka.wire import AvroReader, Undecodable
from campaign_service.adapters.rabbitmq import topology
from campaign_service.backoff import Backoff, sleep_unless
from campaign_service.events.ports import BatchHandler, Deferred, InboundEvent, Outcome, Rejected

log = structlog.get_logger(__name__)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def inbound_headers(m: AbstractIncomingMessage) -> dict[str, str]:
    """The message's headers as strings, with event_id and correlation_id from the message's
    properties when a producer set only those."""
    headers = {k: _text(v) for k, v in (m.headers or {}).items()}
    if m.message_id and "event_id" not in headers:
        headers["event_id"] = m.message_id
    if m.correlation_id and "correlation_id" not in headers:
        headers["correlation_id"] = m.correlation_id
    return headers


class RabbitEventSubscriber:
    def __init__(
        self,
        url: str,
        topic: str,
        codec: AvroReader,
        *,
        queues_per_topic: int,
        batch_size: int = 200,
        retry: Backoff | None = None,
        dead_letter_timeout_s: float = 15.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._url = url
        self._topic = topic
        self._codec = codec
        self._queues = queues_per_topic
        self._batch = batch_size
        self._retry = retry or Backoff(0.2, 5.0)
        self._dlq_timeout = dead_letter_timeout_s
        self._connect_timeout = connect_timeout_s

    async def run(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        connection = await aio_pika.connect(self._url, timeout=self._connect_timeout)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            # Per consumer (one per queue): never more unacked than a batch from one queue.
            await channel.set_qos(prefetch_count=self._batch)
            _, queues = await topology.declare(channel, self._topic, self._queues)
            dlx = await channel.get_exchange(topology.dead_letters(self._topic), ensure=False)
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

            async def arrived(m: AbstractIncomingMessage) -> None:
                inbox.put_nowait(m)

            for queue in queues:
                await queue.consume(arrived, no_ack=False)
            log.info("consuming", topic=self._topic, queues=len(queues), batch_size=self._batch, bus="rabbitmq")
            carried: list[AbstractIncomingMessage] = []  # failed, unacked: they go first next time
            while not stop.is_set():
                if connection.is_closed or channel.is_closed:
                    raise ConnectionError("rabbitmq connection lost")
                batch = carried + await self._take(inbox, self._batch - len(carried), wait_s=0 if carried else 0.25)
                if batch:
                    carried = await self._process(dlx, handler, batch)
                    if carried:
                        await sleep_unless(stop, self._retry.next())
                    else:
                        self._retry.reset()
        finally:
            # Unacked messages (carried or not yet taken) go back to their queues, in order.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 3.0)
            log.info("consumer stopped", topic=self._topic, bus="rabbitmq")

    @staticmethod
    async def _take(
        inbox: asyncio.Queue[AbstractIncomingMessage], limit: int, *, wait_s: float
    ) -> list[AbstractIncomingMessage]:
        """Waits up to `wait_s` for one message, then takes what else is already here (up to `limit`)."""
        if limit <= 0:
            return []
        taken: list[AbstractIncomingMessage] = []
        if inbox.empty() and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                taken.append(await asyncio.wait_for(inbox.get(), wait_s))
        while len(taken) < limit and not inbox.empty():
            taken.append(inbox.get_nowait())
        return taken

    async def _process(
        self, dlx: AbstractExchange, handler: BatchHandler, batch: Sequence[AbstractIncomingMessage]
    ) -> list[AbstractIncomingMessage]:
        """Handles a batch; acks what took effect or was dead-lettered; returns the rest, in order."""
        outcomes = await self._handle(handler, batch)
        failed = {i: o for i, o in enumerate(outcomes) if o is not None and not isinstance(o, Rejected)}
        failed |= await self._dead_letter(
            dlx, [(i, batch[i], o) for i, o in enumerate(outcomes) if isinstance(o, Rejected)]
        )
        self._count_failures([(batch[i], error) for i, error in sorted(failed.items())])
        for i, m in enumerate(batch):
            if i not in failed:
                await m.ack()
        return [batch[i] for i in sorted(failed)]

    async def _handle(self, handler: BatchHandler, batch: Sequence[AbstractIncomingMessage]) -> list[Outcome]:
        """One outcome per message: Rejected for one that cannot be decoded, else the handler's."""
        outcomes: list[Outcome] = [None] * len(batch)
        events: list[InboundEvent] = []
        decoded: list[int] = []
        for i, m in enumerate(batch):
            try:
                payload = await self._codec.decode(m.body)
            except Undecodable as exc:
                outcomes[i] = Rejected("undecodable", str(exc))
                continue
            events.append(InboundEvent(self._topic, m.routing_key or None, payload, inbound_headers(m)))
            decoded.append(i)
        if not events:
            return outcomes
        try:
            handled = await handler(events)
        except Exception as exc:  # a handler that fails as a whole: every event comes again
            handled = [exc] * len(events)
        for i, outcome in zip(decoded, handled, strict=True):
            outcomes[i] = outcome
        return outcomes

    def _count_failures(self, failed: list[tuple[AbstractIncomingMessage, Exception]]) -> None:
        attempted = [(m, e) for m, e in failed if not isinstance(e, Deferred)]
        for _ in attempted:
            metrics.RETRIES.labels("consumer").inc()
            metrics.ASSIGNMENT_FAILURES.labels(self._topic, "transient").inc()
        if attempted:
            m, error = attempted[0]
            log.warning(
                "event handling failed; will retry",
                topic=self._topic,
                delivery_tag=m.delivery_tag,
                failed=len(attempted),
                deferred=len(failed) - len(attempted),
                error=f"{type(error).__name__}: {error}"[:300],
            )

    async def _dead_letter(
        self, dlx: AbstractExchange, dead: list[tuple[int, AbstractIncomingMessage, Rejected]]
    ) -> dict[int, Exception]:
        """Publishes the (index, message, reason)s to the dead-letter exchange in order and waits
        (bounded) for the broker's confirms; what went wrong, by index, for those not confirmed."""
        sent: list[tuple[int, AbstractIncomingMessage, Rejected, asyncio.Task[object]]] = []
        for i, m, rejected in dead:
            headers: dict[str, Any] = {
                **(m.headers or {}),
                DLQ_REASON: rejected.reason,
                DLQ_DETAIL: rejected.detail[:500],
                DLQ_SOURCE: f"{self._topic}/{m.routing_key}/{m.message_id or ''}",
            }
            letter = aio_pika.Message(
                m.body,
                headers=headers,
                message_id=m.message_id,
                correlation_id=m.correlation_id,
                type=m.type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            publish = dlx.publish(letter, routing_key=m.routing_key or "", mandatory=True)
            sent.append((i, m, rejected, asyncio.ensure_future(publish)))
        undelivered: dict[int, Exception] = {}
        if sent:
            await asyncio.wait([t for *_, t in sent], timeout=self._dlq_timeout)
        for i, m, rejected, task in sent:
            if not task.done():
                task.cancel()
                undelivered[i] = TimeoutError("no dead-letter confirm in time")
                continue
            error = None if task.cancelled() else task.exception()
            if task.cancelled() or isinstance(error, Exception):
                undelivered[i] = error if isinstance(error, Exception) else TimeoutError("dead letter cancelled")
                continue
            metrics.ASSIGNMENT_FAILURES.labels(self._topic, "dead_letter").inc()
            metrics.DEAD_LETTERED.labels(self._topic, rejected.reason).inc()
            log.warning(
                "dead-lettered",
                topic=self._topic,
                key=m.routing_key,
                reason=rejected.reason,
                correlation_id=inbound_headers(m).get("correlation_id", ""),
            )
        return undelivered
