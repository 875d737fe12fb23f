"""Kafka adapters of the event port: producer, outbox publisher, consumer with dead letters."""
