"""Event flow: the outbox relay and the handlers of consumed events."""
