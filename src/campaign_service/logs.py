"""Structured JSON logs for Loki: one object per line, every line with the same core keys.

Core keys: timestamp, level, message, correlation_id, merchant_id, tier_id, event_type (null
when they do not apply), and trace_id and span_id (lowercase hex, W3C) of the current
OpenTelemetry span, present only while one is (tracing on: an RPC, a consumed batch).
Per-request values are bound with structlog contextvars by the gRPC interceptor, so every line
logged while handling it carries them. The Kafka consumer logs one line per batch; its per-event
lines (dead letters) carry the event's correlation_id themselves.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from campaign_service import context

CORE_KEYS = ("correlation_id", "merchant_id", "tier_id", "event_type")


def _add_request_fields(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    cid = context.correlation_id.get()
    if cid and not event.get("correlation_id"):
        event["correlation_id"] = cid
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid and "trace_id" not in event:
        event["trace_id"] = f"{span_context.trace_id:032x}"
        event["span_id"] = f"{span_context.span_id:016x}"
    fields = context.log_fields.get()
    if fields:
        for key, value in fields.items():
            event.setdefault(key, value)
    for key in CORE_KEYS:
        event.setdefault(key, None)
    return event


# A token must never reach a log line, whoever logs it (our code, grpc, a library's exception).
_SECRETS = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # a JWT (its header is base64 '{"')
    r"|(?i:bearer)\s+[A-Za-z0-9\-._~+/]+=*"
)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRETS.sub("[REDACTED]", value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    return {key: _redacted(value) for key, value in event.items()}


# JSON leaves these unescaped, yet many readers (Python's splitlines, JavaScript) end a line at
# them: a caller's field holding one would split a log record in two.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def one_line_json(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, **kwargs).translate(_LINE_BREAKS)


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
            redact_secrets,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(serializer=one_line_json),
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
