"""Avro in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body.

Schemas are the `.avsc` files shipped in the package (`avro/` at the repository root links
there); each topic's schema is registered under the subject `<topic>-value` (TopicNameStrategy).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from importlib import resources
from typing import Any

import fastavro

from campaign_service import topics
from campaign_service.adapters.schema_registry import SchemaRegistryClient, UnknownSchemaId

_HEADER = struct.Struct(">bI")
MAGIC = 0

SCHEMA_FILES: Mapping[str, str] = {
    topics.VIP_TIER_ASSIGNED: "vip_tier_assigned.avsc",
    topics.VIP_TIER_UPDATED: "vip_tier_updated.avsc",
    topics.CUSTOMER_CREATED: "customer_created.avsc",
    topics.POINTS_RECORDED: "points_recorded.avsc",
}


class Undecodable(Exception):
    """Bytes that are not a decodable Confluent-framed Avro record; retrying cannot help."""


class UnencodablePayload(Exception):
    """A payload that does not fit its topic's schema (a bug in the producer of the payload)."""


def schema_text(topic: str) -> str:
    """The canonical JSON text of the topic's schema, as registered."""
    name = SCHEMA_FILES[topic]
    raw = resources.files("campaign_service").joinpath("avro", name).read_text(encoding="utf-8")
    return json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)


def subject(topic: str) -> str:
    return f"{topic}-value"


class AvroWireCodec:
    def __init__(self, registry: SchemaRegistryClient) -> None:
        self._registry = registry
        self._write: dict[str, tuple[int, Any]] = {}
        self._read: dict[int, Any] = {}

    async def register_all(self, names: list[str] | None = None) -> None:
        for topic in names or list(SCHEMA_FILES):
            await self._writer(topic)

    async def _writer(self, topic: str) -> tuple[int, Any]:
        cached = self._write.get(topic)
        if cached is None:
            text = schema_text(topic)
            schema_id = await self._registry.register(subject(topic), text)
            cached = (schema_id, fastavro.parse_schema(json.loads(text)))
            self._write[topic] = cached
        return cached

    async def encode(self, topic: str, payload: Mapping[str, Any]) -> bytes:
        schema_id, parsed = await self._writer(topic)
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, schema_id))
        try:
            fastavro.schemaless_writer(buf, parsed, dict(payload), strict_allow_default=True)
        except (ValueError, TypeError, KeyError) as exc:
            raise UnencodablePayload(f"{topic}: {exc}") from None
        return buf.getvalue()

    async def decode(self, data: bytes | None) -> dict[str, Any]:
        """The record in `data`, read with the schema its id names; raises Undecodable."""
        if data is None or len(data) < _HEADER.size:
            raise Undecodable("shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise Undecodable(f"magic byte {magic}, expected {MAGIC}")
        parsed = self._read.get(schema_id)
        if parsed is None:
            try:
                text = await self._registry.schema(schema_id)
            except UnknownSchemaId as exc:
                raise Undecodable(str(exc)) from None
            try:
                parsed = fastavro.parse_schema(json.loads(text))
            except (ValueError, fastavro.schema.SchemaParseException) as exc:
                raise Undecodable(f"schema id {schema_id} is not an Avro schema: {exc}"[:200]) from None
            self._read[schema_id] = parsed
        try:
            record = fastavro.schemaless_reader(io.BytesIO(memoryview(data)[_HEADER.size :]), parsed)
        except Exception as exc:  # any failure to read foreign bytes means "undecodable"
            raise Undecodable(f"Avro body does not match schema id {schema_id}: {type(exc).__name__}") from None
        if not isinstance(record, dict):
            raise Undecodable(f"schema id {schema_id} is not a record schema")
        return record
