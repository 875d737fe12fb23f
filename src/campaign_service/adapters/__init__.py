"""Adapters to the outside world: PostgreSQL, Redis, Kafka, the schema registry."""
