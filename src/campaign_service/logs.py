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
import time
from collections.abc import Callable, MutableMapping
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
    cygrpc = logging.getLogger("grpc._cython.cygrpc")
    for existing in [f for f in cygrpc.filters if isinstance(f, GrpcUndecodableFilter)]:
        cygrpc.removeFilter(existing)
    cygrpc.addFilter(GrpcUndecodableFilter(CALLER_INPUT))
    structlog.configure(
        # filter_by_level first: a debug line below the level costs one comparison, not a render.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


class CallerInputLimiter:
    """Bad input from callers is worth a warning, but callers choose how often it happens: at
    most one line per cause per `interval_s`, the next one counting the lines left out."""

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s, self._clock = interval_s, clock
        self._last: dict[str, float] = {}  # causes are a fixed few named in code, never the caller's
        self._dropped: dict[str, int] = {}

    def admit(self, cause: str) -> int | None:
        """None: leave this line out; else the count of lines of `cause` left out before it."""
        now = self._clock()
        last = self._last.get(cause)
        if last is not None and now - last < self._interval_s:
            self._dropped[cause] = self._dropped.get(cause, 0) + 1
            return None
        self._last[cause] = now
        return self._dropped.pop(cause, 0)


CALLER_INPUT = CallerInputLimiter()
_caller_log = structlog.get_logger("campaign_service.caller_input")


def caller_input_warning(cause: str, message: str, **fields: Any) -> None:
    """One warning line, no traceback, rate-limited per `cause`: for input a caller got wrong
    (it says nothing about our health, so never error level). `fields` must not hold the input."""
    dropped = CALLER_INPUT.admit(cause)
    if dropped is not None:
        _caller_log.warning(message, cause=cause, suppressed=dropped, **fields)


class GrpcUndecodableFilter(logging.Filter):
    """grpc-core's Python layer logs a metadata value that is not UTF-8 with `logger.exception`
    ("Invalid encoding on b'...'": an error line with a traceback, and the raw value - a token,
    perhaps) and hands it on decoded as Latin-1, so auth refuses it. That is a caller's bad input:
    rewritten here to a rate-limited warning without the value or a traceback."""

    CAUSE = "metadata_not_utf8"

    def __init__(self, limiter: CallerInputLimiter) -> None:
        super().__init__()
        self._limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith("Invalid encoding on")):
            return True
        dropped = self._limiter.admit(self.CAUSE)
        if dropped is None:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args = "a metadata value is not valid UTF-8 (read as Latin-1: no token matches)", ()
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.cause, record.suppressed = self.CAUSE, dropped
        return True
