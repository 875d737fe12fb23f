"""RabbitMQ adapters of the event port (aio-pika): the outbox publisher and the consumer with dead letters."""
