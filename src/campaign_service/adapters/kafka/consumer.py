"""EventSubscriber on Kafka: a consumer group member with manual offset commits and a dead-letter topic.

It takes what is ready (up to `batch_size` messages, never waiting for a full batch) and hands
the decoded events to the batch handler in one call; the handler keeps the order of each key
(see events.ports.BatchHandler). Offsets are committed only up to the first message not yet
handled: its outcome was None (its database transaction committed), or it was dead-lettered
(undecodable, or Rejected by the handler) and the dead letter acknowledged by the broker. Any
other outcome leaves the partition at the earliest such message: it is rewound there and the
batch retried after a bounded backoff (counted in campaign_retries_total). Messages after it
that did succeed come again, and the handler's deduplication absorbs them. (A dead letter the
broker did not take also makes its message come again; later events of its key may have taken
effect meanwhile, which is harmless: a rejected event has no effect of its own to order.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from campaign_service import metrics
from campaign_service.adapters.kafka.producer import DeliveryFailed, KafkaProducer
from campaign_service.adapters.kafka.wire import AvroReader, Undecodable
from campaign_service.backoff import Backoff, sleep_unless
from campaign_service.events.ports import BatchHandler, Deferred, InboundEvent, Outcome, Rejected

if TYPE_CHECKING:
    from prometheus_client import Histogram

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
        # Offsets are committed asynchronously (see KafkaEventSubscriber._commit); this reports failures.
        "on_commit": _log_commit,
        "logger": logging.getLogger("librdkafka.consumer"),
    }


def _log_error(err: KafkaError) -> None:
    # Connection failures are already in librdkafka's own log lines; say only what changes state.
    if err.fatal() or err.code() == KafkaError._ALL_BROKERS_DOWN:
        log.warning("kafka consumer error", error=err.str(), fatal=err.fatal())


def _log_commit(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
    # Not fatal: the messages come again (e.g. after a rebalance) and dedupe absorbs them.
    failed = [tp for tp in partitions if tp.error is not None]
    if err is not None or failed:
        log.warning(
            "offset commit failed",
            error=str(err if err is not None else failed[0].error),
            partitions=[f"{tp.topic}/{tp.partition}@{tp.offset}" for tp in (failed or partitions)][:10],
        )


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


class KafkaEventSubscriber:
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        codec: AvroReader,
        dead_letters: KafkaProducer,
        dead_letter_topic: str,
        *,
        batch_size: int = 200,
        retry: Backoff | None = None,
        dead_letter_timeout_s: float = 15.0,
    ) -> None:
        self._config = config
        self._topic = topic
        self._codec = codec
        self._dlq = dead_letters
        self._dlq_topic = dead_letter_topic
        self._batch = batch_size
        self._retry = retry or Backoff(0.2, 5.0)
        self._dlq_timeout = dead_letter_timeout_s
        # Every call into the (blocking) consumer happens on this one thread, in order.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="kafka-consumer")
        # The offsets last committed (asynchronously), by partition: committed again, waiting for
        # the broker, when the consumer stops.
        self._committed: dict[tuple[str, int], int] = {}

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    async def run(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        consumer = Consumer(self._config)
        await self._call(consumer.subscribe, [self._topic])
        log.info("consuming", topic=self._topic, group=self._config["group.id"], batch_size=self._batch)
        try:
            steps = metrics.CONSUMER_STEP_SECONDS
            fetch, handle, commit = (steps.labels(self._topic, s) for s in ("fetch", "handle", "commit"))
            while not stop.is_set():
                started = time.perf_counter()
                messages = await self._call(_fetch, consumer, self._batch, 0.25)
                if messages:
                    fetch.observe(time.perf_counter() - started)
                    await self._process(consumer, handler, messages, stop, handle, commit)
        finally:
            # The offsets of everything handled, committed again and waited for (the last
            # asynchronous commits may still be in flight); close() leaves the group now so
            # partitions move to another instance without waiting for the session timeout.
            await self._commit_and_wait(consumer)
            await self._call(consumer.close)
            self._thread.shutdown(wait=False)
            log.info("consumer stopped", topic=self._topic)

    async def _process(
        self,
        consumer: Consumer,
        handler: BatchHandler,
        messages: Sequence[Message],
        stop: asyncio.Event,
        handle_step: Histogram,
        commit_step: Histogram,
    ) -> None:
        started = time.perf_counter()
        received: list[Message] = []
        for m in messages:
            err = m.error()
            if err is not None:
                log.warning("kafka consume error", error=err.str())
            else:
                received.append(m)
        outcomes = await self._handle(handler, received)
        failed = {i: o for i, o in enumerate(outcomes) if o is not None and not isinstance(o, Rejected)}
        # Dead letters in the order of their messages; one that the broker did not take comes again.
        failed |= await self._dead_letter(
            [(i, received[i], o) for i, o in enumerate(outcomes) if isinstance(o, Rejected)]
        )
        self._count_failures([(received[i], error) for i, error in sorted(failed.items())])
        commits: list[TopicPartition] = []
        rewinds: list[TopicPartition] = []
        for (topic, partition), indexes in _by_partition(received).items():
            first, last = received[indexes[0]].offset() or 0, received[indexes[-1]].offset() or 0
            first_failed = next((received[i].offset() or 0 for i in indexes if i in failed), None)
            if first_failed is None:
                commits.append(TopicPartition(topic, partition, last + 1))
                continue
            if first_failed > first:
                commits.append(TopicPartition(topic, partition, first_failed))
            rewinds.append(TopicPartition(topic, partition, first_failed))
        handled = time.perf_counter()
        handle_step.observe(handled - started)
        await self._commit(consumer, commits)
        commit_step.observe(time.perf_counter() - handled)
        await self._rewind(consumer, rewinds)
        if rewinds:
            await sleep_unless(stop, self._retry.next())
        else:
            self._retry.reset()

    async def _handle(self, handler: BatchHandler, received: list[Message]) -> list[Outcome]:
        """One outcome per message: Rejected for one that cannot be decoded, else the handler's."""
        outcomes: list[Outcome] = [None] * len(received)
        events: list[InboundEvent] = []
        decoded: list[int] = []
        for i, m in enumerate(received):
            try:
                payload = await self._codec.decode(m.value())
            except Undecodable as exc:
                outcomes[i] = Rejected("undecodable", str(exc))
                continue
            key = m.key()
            headers = {k: _text(v) for k, v in _header_items(m)}
            events.append(
                InboundEvent(_text(m.topic()), key.decode("utf-8", "replace") if key else None, payload, headers)
            )
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

    def _count_failures(self, failed: list[tuple[Message, Exception]]) -> None:
        attempted = [(m, e) for m, e in failed if not isinstance(e, Deferred)]
        for m, _ in attempted:
            metrics.RETRIES.labels("consumer").inc()
            metrics.ASSIGNMENT_FAILURES.labels(_text(m.topic()), "transient").inc()
        if attempted:
            m, error = attempted[0]
            log.warning(
                "event handling failed; will retry",
                topic=m.topic(),
                partition=m.partition(),
                offset=m.offset(),
                failed=len(attempted),
                deferred=len(failed) - len(attempted),
                error=f"{type(error).__name__}: {error}"[:300],
            )

    async def _commit(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        """Commits without waiting for the broker: the next fetch does not wait a round trip to the
        group coordinator (bench.points_latency). A commit that fails or is lost (the instance dies
        first) only makes its messages come again, and the handlers' deduplication absorbs them,
        as after a crash between a database commit and the offset commit."""
        if not offsets:
            return
        try:
            await self._call(consumer.commit, offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            # Not fatal: the messages come again (e.g. after a rebalance) and dedupe absorbs them.
            log.warning("offset commit failed", error=str(exc))
            return
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset
        for tp in offsets:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))

    async def _commit_and_wait(self, consumer: Consumer) -> None:
        """The last offsets again, synchronously, for the partitions still assigned (a revoked
        one's new owner may have committed further: never move it back)."""
        if not self._committed:
            return
        try:
            assigned = {(tp.topic, tp.partition) for tp in await self._call(consumer.assignment)}
        except KafkaException:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._committed.items() if (t, p) in assigned]
        if not offsets:
            return
        try:
            await self._call(consumer.commit, offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. partitions revoked meanwhile: their new owner goes on
            log.info("final offset commit failed", error=str(exc))

    async def _rewind(self, consumer: Consumer, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            try:
                await self._call(consumer.seek, tp)
            except KafkaException as exc:
                log.warning("rewind failed; the message comes again after a rebalance", error=str(exc))

    async def _dead_letter(self, dead: list[tuple[int, Message, Rejected]]) -> dict[int, Exception]:
        """Sends the (index, message, reason)s to the dead-letter topic in order and waits (bounded)
        for the broker; what went wrong, by index, for those it did not acknowledge."""
        sent: list[tuple[int, Message, Rejected, asyncio.Future[None]]] = []
        undelivered: dict[int, Exception] = {}
        for i, m, rejected in dead:
            # The original headers as they came, byte for byte (a null value stays null), then ours.
            headers: list[tuple[str, bytes | None]] = [
                *((k, v.encode() if isinstance(v, str) else v) for k, v in _header_items(m)),
                (DLQ_REASON, rejected.reason.encode()),
                (DLQ_DETAIL, rejected.detail[:500].encode()),
                (DLQ_SOURCE, f"{_text(m.topic())}/{m.partition()}/{m.offset()}".encode()),
            ]
            try:
                delivered = await self._dlq.send(self._dlq_topic, m.value(), key=m.key(), headers=headers)
            except DeliveryFailed as exc:
                undelivered[i] = exc
                continue
            sent.append((i, m, rejected, delivered))
        if sent:
            await asyncio.wait([f for *_, f in sent], timeout=self._dlq_timeout)
        for i, m, rejected, delivered in sent:
            if not delivered.done():
                delivered.cancel()
                undelivered[i] = TimeoutError("no dead-letter delivery report in time")
                continue
            error = delivered.exception()
            if isinstance(error, Exception):
                undelivered[i] = error
                continue
            topic = _text(m.topic())
            metrics.ASSIGNMENT_FAILURES.labels(topic, "dead_letter").inc()
            metrics.DEAD_LETTERED.labels(topic, rejected.reason).inc()
            log.warning(
                "dead-lettered",
                topic=topic,
                partition=m.partition(),
                offset=m.offset(),
                reason=rejected.reason,
                correlation_id=_text(dict(_header_items(m)).get("correlation_id")),
            )
        return undelivered


def _by_partition(messages: list[Message]) -> dict[tuple[str, int], list[int]]:
    """The indexes of each partition's messages, in offset order (as fetched)."""
    partitions: dict[tuple[str, int], list[int]] = {}
    for i, m in enumerate(messages):
        partitions.setdefault((_text(m.topic()), m.partition() or 0), []).append(i)
    return partitions


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
