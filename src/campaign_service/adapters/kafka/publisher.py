"""EventPublisher on Kafka: outbox messages as Confluent-framed Avro, keyed and with headers."""

from __future__ import annotations

from collections.abc import Sequence

from campaign_service.adapters.kafka.producer import KafkaProducer, Outgoing
from campaign_service.adapters.kafka.wire import AvroWireCodec, UnencodablePayload
from campaign_service.adapters.schema_registry import RegistryRejected, RegistryUnavailable
from campaign_service.domain.events import OutboxMessage


def kafka_headers(message: OutboxMessage) -> list[tuple[str, bytes]]:
    """The outbox headers (correlation_id, cause_event_id, ...) plus event_id and event_type, so
    consumers can deduplicate and route without decoding the body."""
    headers = {**message.headers, "event_id": str(message.event_id), "event_type": message.topic}
    return [(k, v.encode()) for k, v in headers.items()]


class KafkaEventPublisher:
    def __init__(self, producer: KafkaProducer, codec: AvroWireCodec, *, delivery_timeout_s: float) -> None:
        self._producer = producer
        self._codec = codec
        # librdkafka fails each message after message.timeout.ms; this is only a safety net.
        self._wait_s = delivery_timeout_s + 5.0

    async def publish(self, batch: Sequence[OutboxMessage]) -> list[str | None]:
        results: list[str | None] = [None] * len(batch)
        outgoing: list[Outgoing] = []
        sent_at: list[int] = []  # index in `batch` of each outgoing message
        for i, message in enumerate(batch):
            try:
                value = await self._codec.encode(message.topic, message.payload)
            except RegistryUnavailable as exc:
                # Every later message needs the registry too: fail them now rather than one timeout each.
                results[i:] = [str(exc)] * (len(batch) - i)
                break
            except (UnencodablePayload, RegistryRejected) as exc:
                results[i] = str(exc)
                continue
            outgoing.append(Outgoing(message.topic, value, message.key.encode(), kafka_headers(message)))
            sent_at.append(i)
        delivered = await self._producer.send_batch(outgoing, self._wait_s)
        for i, error in zip(sent_at, delivered, strict=True):
            results[i] = error
        return results

    async def close(self) -> None:
        await self._producer.close()
