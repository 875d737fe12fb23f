"""An idempotent confluent-kafka Producer driven from asyncio.

`produce()` only enqueues (never blocks the loop for long); a thread polls librdkafka so
delivery reports resolve asyncio futures. After a fatal librdkafka error the producer is
rebuilt: what was queued on the dead one fails and its caller retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from campaign_service import metrics

log = structlog.get_logger(__name__)

# How long produce() waits for room in librdkafka's local queue before giving up (bounded).
_QUEUE_FULL_WAIT_S = 5.0


class DeliveryFailed(Exception):
    pass


Headers = Sequence[tuple[str, bytes | None]]


@dataclass(frozen=True)
class Outgoing:
    """One message of a batch: topic, value, key, headers."""

    topic: str
    value: bytes | None
    key: bytes | None
    headers: Headers = ()


class _Deliveries:
    """The delivery reports of one batch. librdkafka calls back per message in the poll thread;
    the event loop is woken once, when the last report is in (a future and a loop wake-up per
    message cost more than the rest of the relay's Python per message)."""

    _NONE_YET = "no delivery report in time"

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self._errors: list[str | None] = [self._NONE_YET] * n
        self._loop = loop
        self._left = n
        self._lock = threading.Lock()  # close() flushes in another thread while the poller runs
        self.done: asyncio.Future[None] = loop.create_future()

    def report(self, i: int, error: str | None) -> None:
        with self._lock:
            if self._left <= 0:
                return  # finished (timed out): a late report changes nothing
            self._errors[i] = error
            self._left -= 1
            last = self._left == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                self._loop.call_soon_threadsafe(_settle, self.done)

    def finish(self) -> list[str | None]:
        """The outcome per message; a message without a report by now failed."""
        with self._lock:
            self._left = 0
            return list(self._errors)


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def producer_config(bootstrap: str, *, client_id: str, delivery_timeout_ms: int, linger_ms: int) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": linger_ms,
        "message.timeout.ms": delivery_timeout_ms,
        # After an outage, reconnect within a second rather than the 10 s default.
        "reconnect.backoff.max.ms": 1000,
        # librdkafka's own log lines go through logging (JSON), not raw to stderr.
        "logger": logging.getLogger("librdkafka.producer"),
    }


class KafkaProducer:
    def __init__(self, config: dict[str, Any]) -> None:
        self._config = {**config, "error_cb": self._on_error}
        self._producer = Producer(self._config)
        self._fatal: str | None = None
        self._closing = False
        self._broker_down = False
        self._poller = threading.Thread(target=self._poll_forever, name="kafka-producer-poll", daemon=True)
        self._poller.start()

    @property
    def broker_down(self) -> bool:
        """True after librdkafka reported all brokers down, until a delivery succeeds."""
        return self._broker_down

    def _poll_forever(self) -> None:
        while not self._closing:
            try:
                self._producer.poll(0.1)
            except Exception:  # a failing callback must not end delivery reports for everyone else
                log.exception("kafka producer callback failed")

    def _on_error(self, err: KafkaError) -> None:
        # Connection failures are already in librdkafka's own log lines; say only what changes state.
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._broker_down = True
            log.warning("kafka producer: all brokers down", error=err.str())
        if err.fatal():
            self._fatal = err.str()
            log.error("kafka producer: fatal error", error=err.str())

    def _rebuild_if_fatal(self) -> None:
        if self._fatal is None:
            return
        log.error("rebuilding the kafka producer after a fatal error", error=self._fatal)
        metrics.PRODUCER_REBUILDS.inc()
        old, self._producer = self._producer, Producer(self._config)
        self._fatal = None
        old.purge()  # queued messages fail now (their callers retry) instead of hanging
        old.flush(0)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes | None]] = (),
    ) -> asyncio.Future[None]:
        """Enqueues one message; the future completes when the broker has it (acks=all) or fails."""
        self._rebuild_if_fatal()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(err: KafkaError | None) -> None:
            if done.done():
                return
            if err is None:
                done.set_result(None)
            else:
                done.set_exception(DeliveryFailed(err.str()))

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self._broker_down = False
            elif err.fatal():
                self._fatal = err.str()
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(settle, err)

        deadline = loop.time() + _QUEUE_FULL_WAIT_S
        while True:
            try:
                self._producer.produce(topic, value, key, headers=list(headers), on_delivery=on_delivery)
                return done
            except BufferError:
                if loop.time() >= deadline:
                    raise DeliveryFailed("local producer queue full") from None
                metrics.RETRIES.labels("producer_queue_full").inc()
                await asyncio.sleep(0.05)

    async def send_batch(self, messages: Sequence[Outgoing], wait_s: float) -> list[str | None]:
        """Enqueues the messages in order and waits (at most `wait_s`) for their delivery reports:
        one entry per message, None when the broker has it (acks=all), else a short error."""
        if not messages:
            return []
        self._rebuild_if_fatal()
        loop = asyncio.get_running_loop()
        deliveries = _Deliveries(loop, len(messages))
        for i, m in enumerate(messages):
            callback = self._reporter(deliveries, i)
            deadline = loop.time() + _QUEUE_FULL_WAIT_S
            while True:
                try:
                    self._producer.produce(m.topic, m.value, m.key, headers=list(m.headers), on_delivery=callback)
                    break
                except BufferError:
                    if loop.time() >= deadline:
                        deliveries.report(i, "local producer queue full")
                        break
                    metrics.RETRIES.labels("producer_queue_full").inc()
                    await asyncio.sleep(0.05)
                except KafkaException as exc:  # e.g. a message larger than the broker takes
                    deliveries.report(i, str(exc.args[0] if exc.args else exc))
                    break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(deliveries.done), wait_s)
        return deliveries.finish()

    def _reporter(self, deliveries: _Deliveries, i: int) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self._broker_down = False
                deliveries.report(i, None)
                return
            if err.fatal():
                self._fatal = err.str()
            deliveries.report(i, err.str())

        return on_delivery

    async def close(self, timeout_s: float = 10.0) -> None:
        """Waits (bounded) for queued messages, then stops the poll thread."""
        remaining = await asyncio.to_thread(self._producer.flush, timeout_s)
        if remaining:
            log.warning("kafka producer closed with undelivered messages", count=remaining)
        self._closing = True
        await asyncio.to_thread(self._poller.join, 2.0)
