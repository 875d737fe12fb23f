"""Identifiers callers send: UUIDs in their canonical textual form only; correlation ids."""

from __future__ import annotations

import functools
import re
from typing import TypeGuard
from uuid import UUID

from campaign_service.domain.errors import invalid

# Only the 8-4-4-4-12 hex form: uuid.UUID() alone also takes braces, `urn:uuid:`, misplaced
# hyphens, underscores and non-ASCII digits, which would let one id have many spellings.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
UUID_HINT = "must be a UUID like 123e4567-e89b-12d3-a456-426614174000"
# What a caller's correlation id may be (from gRPC metadata or a Kafka header); anything else is
# replaced by a new one. It goes into logs, headers and JSON: no control characters, bounded.
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@functools.lru_cache(maxsize=4096)
def _canonical(value: str) -> UUID | None:
    # Every request names its merchant, often more than once (auth, rate limit, use case): the
    # same few ids are parsed again and again. Only 36-character strings reach this cache.
    return UUID(value) if _UUID.fullmatch(value) else None


def as_uuid(value: object) -> UUID | None:
    """`value` as a UUID when it is one in canonical form, else None."""
    return _canonical(value) if isinstance(value, str) and len(value) == 36 else None


def is_uuid(value: object) -> bool:
    return as_uuid(value) is not None


def is_correlation_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _CORRELATION_ID.fullmatch(value) is not None


def parse_uuid(value: str, field_path: str) -> UUID:
    parsed = as_uuid(value)
    if parsed is None:
        raise invalid(field_path, UUID_HINT)
    return parsed
