"""AMQP 0-9-1 frames of one `basic.publish`, encoded directly (the bytes pamqp would make for the
same publish, checked by tests/unit/test_rabbitmq_frames.py).

Why not pamqp: its generic marshalling (a property object, a type lookup per field, a frame object
per part) costs about as much CPU per message as the broker spends storing it; the outbox relay
publishes thousands a second and only ever sets these properties: headers (strings), delivery
mode, priority (0), correlation id, message id and type.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

FRAME_METHOD, FRAME_HEADER, FRAME_BODY = 1, 2, 3
FRAME_END = b"\xce"
BASIC_CLASS, BASIC_PUBLISH = 60, 40

# Basic property flags (AMQP 0-9-1 section 4.2.6.1: most significant bit first, in field order).
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_PRIORITY = 1 << 11
_CORRELATION_ID = 1 << 10
_MESSAGE_ID = 1 << 7
_TYPE = 1 << 5

_frame_head = struct.Struct(">BHI")
_publish_head = struct.Struct(">HHH")  # class, method, reserved (ticket)
_content_head = struct.Struct(">HHQH")  # class, weight, body size, property flags
_long = struct.Struct(">I")


def _short_string(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"{value[:40]!r}...: longer than an AMQP short string (255 bytes)")
    return bytes((len(raw),)) + raw


def _table(headers: Mapping[str, str]) -> bytes:
    """A field table of string values (type S, long string), keys in sorted order as pamqp writes."""
    parts = []
    for key in sorted(headers):
        value = headers[key].encode()
        parts.append(_short_string(key) + b"S" + _long.pack(len(value)) + value)
    body = b"".join(parts)
    return _long.pack(len(body)) + body


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _frame_head.pack(kind, channel, len(payload)) + payload + FRAME_END


def publish_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    message_id: str,
    correlation_id: str | None,
    type_: str,
    persistent: bool,
    mandatory: bool,
    max_body_frame: int,
) -> bytes:
    """The method, content header and body frames of one publish on `channel`, the body split
    into frames of at most `max_body_frame` bytes (the connection's frame_max less 8)."""
    method = (
        _publish_head.pack(BASIC_CLASS, BASIC_PUBLISH, 0)
        + _short_string(exchange)
        + _short_string(routing_key)
        + (b"\x01" if mandatory else b"\x00")
    )
    # As aio-pika's Message and pamqp make them: priority 0 always, an empty string left out.
    flags = _HEADERS | _DELIVERY_MODE | _PRIORITY
    properties = [_table(headers), b"\x02\x00" if persistent else b"\x01\x00"]
    for flag, value in ((_CORRELATION_ID, correlation_id), (_MESSAGE_ID, message_id), (_TYPE, type_)):
        if value:
            flags |= flag
            properties.append(_short_string(value))
    header = _content_head.pack(BASIC_CLASS, 0, len(body), flags) + b"".join(properties)
    frames = [_frame(FRAME_METHOD, channel, method), _frame(FRAME_HEADER, channel, header)]
    for start in range(0, len(body), max_body_frame):
        frames.append(_frame(FRAME_BODY, channel, body[start : start + max_body_frame]))
    return b"".join(frames)
