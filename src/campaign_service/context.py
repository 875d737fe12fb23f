"""Per-request values that interceptors set and the layers below read (correlation id, actor)."""

from __future__ import annotations

import uuid
from contextvars import ContextVar

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")
actor: ContextVar[str] = ContextVar("actor", default="anonymous")


def current_correlation_id() -> str:
    value = correlation_id.get()
    if not value:
        value = str(uuid.uuid4())
        correlation_id.set(value)
    return value


# How the cache answered the current lookup: "hit", "miss", or "none" when no cache is in use.
cache_result: ContextVar[str] = ContextVar("cache_result", default="none")
