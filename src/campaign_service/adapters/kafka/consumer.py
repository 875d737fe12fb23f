"""EventSubscriber on Kafka: a consumer group member with manual offset commits and a dead-letter topic.

Messages with the same key are handled in order; different keys (and partitions) concurrently,
at most `concurrency` at a time. Offsets are committed only up to the first message not yet
handled: after the handler returned (its database transaction committed) or the message was
dead-lettered and the dead letter acknowledged by the broker. A handler failure other than
Rejected stops its key at the failing message; the partition is rewound to the earliest such
message and retried after a bounded backoff (counted in campaign_retries_total). Messages after
it that did succeed come again, and the handler's deduplication absorbs them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from campaign_service import context, metrics
from campaign_service.adapters.kafka.producer import KafkaProducer
from campaign_service.adapters.kafka.wire import AvroWireCodec, Undecodable
from campaign_service.backoff import Backoff, sleep_unless
from campaign_service.events.ports import EventHandler, InboundEvent, Rejected

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Dead-letter headers (besides the original ones).
DLQ_REASON = "dlq_reason"
DLQ_DETAIL = "dlq_detail"
DLQ_SOURCE = "dlq_source"  # topic/partition/offset of the original message


def consumer_config(
    bootstrap: str, *, group_id: str, client_id: str, session_timeout_ms: int = 10_000
) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "client.id": client_id,
        # A crashed instance's partitions move after this long (librdkafka's 45 s default stalled
        # assignments for 45 s after a SIGKILL in the chaos suite).
        "session.timeout.ms": session_timeout_ms,
        "heartbeat.interval.ms": max(1000, session_timeout_ms // 4),
        "enable.auto.commit": False,
        # A new consumer group starts at the beginning: a fresh deployment must not skip customers.
        "auto.offset.reset": "earliest",
        "reconnect.backoff.max.ms": 1000,
        "error_cb": _log_error,
        "logger": logging.getLogger("librdkafka.consumer"),
    }


def _log_error(err: KafkaError) -> None:
    # Connection failures are already in librdkafka's own log lines; say only what changes state.
    if err.fatal() or err.code() == KafkaError._ALL_BROKERS_DOWN:
        log.warning("kafka consumer error", error=err.str(), fatal=err.fatal())


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class KafkaEventSubscriber:
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        codec: AvroWireCodec,
        dead_letters: KafkaProducer,
        dead_letter_topic: str,
        *,
        batch_size: int = 200,
        concurrency: int = 8,
        retry: Backoff | None = None,
        dead_letter_timeout_s: float = 15.0,
    ) -> None:
        self._config = config
        self._topic = topic
        self._codec = codec
        self._dlq = dead_letters
        self._dlq_topic = dead_letter_topic
        self._batch = batch_size
        self._slots = asyncio.Semaphore(concurrency)
        self._retry = retry or Backoff(0.2, 5.0)
        self._dlq_timeout = dead_letter_timeout_s
        # Every call into the (blocking) consumer happens on this one thread, in order.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    async def run(self, handler: EventHandler, stop: asyncio.Event) -> None:
        consumer = Consumer(self._config)
        await self._call(consumer.subscribe, [self._topic])
        log.info("consuming", topic=self._topic, group=self._config["group.id"])
        try:
            while not stop.is_set():
                messages = await self._call(_fetch, consumer, self._batch, 0.25)
                if messages:
                    await self._process(consumer, handler, messages, stop)
        finally:
            # Offsets of everything handled are already committed; close() leaves the group now
            # so partitions move to another instance without waiting for the session timeout.
            await self._call(consumer.close)
            self._thread.shutdown(wait=False)
            log.info("consumer stopped", topic=self._topic)

    async def _process(
        self, consumer: Consumer, handler: EventHandler, messages: Sequence[Message], stop: asyncio.Event
    ) -> None:
        partitions: dict[tuple[str, int], list[Message]] = {}
        for m in messages:
            err = m.error()
            if err is not None:
                log.warning("kafka consume error", error=err.str())
                continue
            partitions.setdefault((_text(m.topic()), m.partition() or 0), []).append(m)
        keys = list(partitions)
        outcomes = await asyncio.gather(*(self._partition(handler, partitions[k]) for k in keys))
        commits: list[TopicPartition] = []
        rewinds: list[TopicPartition] = []
        for (topic, partition), (done, failed) in zip(keys, outcomes, strict=True):
            if done is not None:
                commits.append(TopicPartition(topic, partition, done))
            if failed is not None:
                rewinds.append(TopicPartition(topic, partition, failed))
        await self._commit(consumer, commits)
        await self._rewind(consumer, rewinds)
        if rewinds:
            await sleep_unless(stop, self._retry.next())
        else:
            self._retry.reset()

    async def _commit(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        if not offsets:
            return
        try:
            await self._call(consumer.commit, offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Not fatal: the messages come again (e.g. after a rebalance) and dedupe absorbs them.
            log.warning("offset commit failed", error=str(exc))
            return
        for tp in offsets:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    async def _rewind(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            try:
                await self._call(consumer.seek, tp)
            except KafkaException as exc:
                log.warning("rewind failed; the message comes again after a rebalance", error=str(exc))

    async def _partition(self, handler: EventHandler, messages: list[Message]) -> tuple[int | None, int | None]:
        """(offset to commit, offset to rewind to) after handling one partition's messages."""
        by_key: dict[bytes | int, list[Message]] = {}
        for i, m in enumerate(messages):
            by_key.setdefault(m.key() or i, []).append(m)  # no key: no order to keep
        failures = await asyncio.gather(*(self._in_order(handler, ms) for ms in by_key.values()))
        failed = min((f for f in failures if f is not None), default=None)
        if failed is not None:
            return (failed if failed > (messages[0].offset() or 0) else None), failed
        return (messages[-1].offset() or 0) + 1, None

    async def _in_order(self, handler: EventHandler, messages: list[Message]) -> int | None:
        """Handles messages of one key in order; the offset of the first that failed, if any."""
        for m in messages:
            offset = m.offset() or 0
            try:
                async with self._slots:
                    await self._one(handler, m)
            except Exception as exc:  # anything but Rejected is retried, never skipped
                metrics.RETRIES.labels("consumer").inc()
                metrics.ASSIGNMENT_FAILURES.labels(_text(m.topic()), "transient").inc()
                log.warning(
                    "event handling failed; will retry",
                    topic=m.topic(),
                    partition=m.partition(),
                    offset=offset,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                return offset
        return None

    async def _one(self, handler: EventHandler, m: Message) -> None:
        topic = _text(m.topic())
        headers = {k: _text(v) for k, v in _header_items(m)}
        # Each message logs under its own correlation id, never the previous message's.
        context.correlation_id.set(headers.get("correlation_id", ""))
        try:
            payload = await self._codec.decode(m.value())
        except Undecodable as exc:
            await self._dead_letter(m, "undecodable", str(exc))
            return
        key = m.key()
        event = InboundEvent(topic, key.decode("utf-8", "replace") if key else None, payload, headers)
        try:
            await handler(event)
        except Rejected as exc:
            await self._dead_letter(m, exc.reason, exc.detail)

    async def _dead_letter(self, m: Message, reason: str, detail: str) -> None:
        topic = _text(m.topic())
        headers: list[tuple[str, str | bytes | None]] = [
            *_header_items(m),
            (DLQ_REASON, reason),
            (DLQ_DETAIL, detail[:500]),
            (DLQ_SOURCE, f"{topic}/{m.partition()}/{m.offset()}"),
        ]
        delivered = await self._dlq.send(
            self._dlq_topic, m.value(), key=m.key(), headers=[(k, _text(v).encode()) for k, v in headers]
        )
        await asyncio.wait_for(delivered, self._dlq_timeout)
        metrics.ASSIGNMENT_FAILURES.labels(topic, "dead_letter").inc()
        metrics.DEAD_LETTERED.labels(topic, reason).inc()
        log.warning("dead-lettered", topic=topic, partition=m.partition(), offset=m.offset(), reason=reason)


def _fetch(consumer: Consumer, batch: int, timeout_s: float) -> list[Message]:
    """Waits up to `timeout_s` for one message, then takes what else is already fetched.

    consume(n, timeout) alone would wait for n messages or the whole timeout: latency at low rates."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(batch - 1, 0)] if batch > 1 else [first]


def _header_items(m: Message) -> list[tuple[str, str | bytes | None]]:
    headers = m.headers()
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)
