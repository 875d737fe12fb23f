"""How a topic looks on RabbitMQ: the same names as on Kafka, and queues in place of partitions.

For each topic `<t>` (e.g. customer.created):
- exchange `<t>`, type x-consistent-hash (the rabbitmq_consistent_hash_exchange plugin, shipped
  with the server; enable it), durable. A message's routing key is its Kafka key (the merchant or
  customer id): the exchange hashes it onto one of the topic's queues, so every event of a key
  goes to the same queue, as every event of a Kafka key goes to the same partition.
- queues `<t>.0` .. `<t>.<n-1>`, durable, classic, each bound with weight 1 and declared with
  `x-single-active-consumer`: of all the instances consuming a queue, one at a time receives its
  messages, in queue order; another takes over when it goes away (like a partition's owner in a
  consumer group). Per-key order = queue order = delivery order to the one active consumer; the
  subscriber keeps it by handling a failed message again before anything after it (consumer.py).
  n is CAMPAIGN_RABBITMQ_QUEUES_PER_TOPIC on both sides (like a topic's partition count; changing
  it moves keys between queues, so drain first).
- dead letters: exchange `<t>.dlq` (fanout, durable) into queue `<t>.dlq` (durable). The
  subscriber publishes poison there itself with the reason headers (dlq_reason, dlq_detail,
  dlq_source) and confirms, as on Kafka; the topic's queues also name it as their
  x-dead-letter-exchange, so a message the broker itself drops (e.g. rejected without requeue)
  lands there too.

Publisher and consumers both declare this (idempotent): a queue exists before the first message,
whoever starts first. Messages are persistent and the publisher waits for the broker's confirm,
which for a persistent message routed to durable queues comes once it is on disk; `mandatory`
makes an unroutable message (no queue bound) a failed publish, never a silent drop.
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

HASH_EXCHANGE = "x-consistent-hash"


def dead_letters(topic: str) -> str:
    """The dead-letter exchange and queue of a topic (the name of its Kafka dead-letter topic)."""
    return f"{topic}.dlq"


def queue_names(topic: str, queues: int) -> list[str]:
    return [f"{topic}.{i}" for i in range(queues)]


async def declare(channel: AbstractChannel, topic: str, queues: int) -> tuple[AbstractExchange, list[AbstractQueue]]:
    """Declares the topic's exchange, queues and dead letters (see the module doc)."""
    dlx = await channel.declare_exchange(dead_letters(topic), aio_pika.ExchangeType.FANOUT, durable=True)
    dlq = await channel.declare_queue(dead_letters(topic), durable=True)
    await dlq.bind(dlx)
    exchange = await channel.declare_exchange(topic, HASH_EXCHANGE, durable=True)
    declared = []
    for name in queue_names(topic, queues):
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={"x-single-active-consumer": True, "x-dead-letter-exchange": dead_letters(topic)},
        )
        await queue.bind(exchange, routing_key="1")  # the weight of the queue on the hash ring
        declared.append(queue)
    return exchange, declared
