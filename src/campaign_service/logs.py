"""Structured JSON logs for Loki: one object per line, every line with the same core keys.

Core keys: timestamp, level, message, correlation_id, merchant_id, tier_id, event_type (null
when they do not apply), trace_id and span_id (W3C, when a request or event is being handled).
Per-request values are bound with structlog contextvars by the gRPC interceptor (and by the
Kafka consumer per message), so every line logged while handling it carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from campaign_service import context

CORE_KEYS = ("correlation_id", "merchant_id", "tier_id", "event_type")


def _add_request_fields(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    cid = context.correlation_id.get()
    if cid and not event.get("correlation_id"):
        event["correlation_id"] = cid
    trace = context.trace.get()
    if trace is not None and "trace_id" not in event:
        event["trace_id"] = trace.trace_id
        event["span_id"] = trace.span_id
    for key in CORE_KEYS:
        event.setdefault(key, None)
    return event


def configure(level: str = "info") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        _add_request_fields,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    structlog.configure(
        # filter_by_level first: a debug line below the level costs one comparison, not a render.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
