"""Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro binary body),
with confluent-kafka's schema registry client.

Schemas are the `.avsc` files shipped in the package (`avro/` at the repository root links
there), under the subject `<topic>-value` (TopicNameStrategy).

Writing: only the topics this service produces (PRODUCED) have their schema registered. A subject
owned by another service (customer.created-value is the Core Service's) is never written to:
where its owner sets compatibility, a consumer that registered its own copy would add versions or
fail.

Reading: the writer's schema is the one the message's id names (fetched once from the registry),
resolved against our copy of the schema as the reader schema (Avro schema resolution): fields
the writer added are skipped, fields it lacks take the reader's default.

The registry client is the library's; the framing and the fastavro calls are ours, because the
library's AsyncAvroSerializer/AsyncAvroDeserializer wrap the same fastavro calls in per-message
work we do not use (subject-name strategy, rule and validation machinery, and on reading an
expansion of the reader schema). Measured on the shared 2-core host, interleaved in one process,
2 000 messages x 15 rounds, best round (`bench.avro_codec`, and an A/B against the library's
serializer in four runs): encoding a vip_tier.assigned took ours 10-28 µs, AsyncAvroSerializer
18-35 µs (1.2-2.7x ours in each run); decoding a customer.created with resolution against our
reader schema took ours 20-51 µs, AsyncAvroDeserializer 50-194 µs (2.1-3.8x ours in each of
three runs; 88-239 µs when given a SerializationContext).

A `uuid` logical type is read as its string: an id that is not a UUID in a well-formed record is a
payload the handler rejects (`invalid_payload`), not bytes that cannot be decoded (`undecodable`).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from importlib import resources
from typing import Any

import fastavro
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema

from campaign_service import topics
from campaign_service.adapters.schema_registry import REGISTRY_ERRORS, UnknownSchemaId, registry_error

_HEADER = struct.Struct(">bI")
MAGIC = 0

SCHEMA_FILES: Mapping[str, str] = {
    topics.VIP_TIER_ASSIGNED: "vip_tier_assigned.avsc",
    topics.VIP_TIER_UPDATED: "vip_tier_updated.avsc",
    topics.CUSTOMER_CREATED: "customer_created.avsc",
    topics.POINTS_RECORDED: "points_recorded.avsc",
    topics.CUSTOMER_DELETED: "customer_deleted.avsc",
    topics.VIP_TIER_CUSTOMER_ERASED: "vip_tier_customer_erased.avsc",
    topics.VIP_TIER_DOWNGRADE_SCHEDULED: "vip_tier_downgrade_scheduled.avsc",
}
# The topics whose schema this service owns and registers; a new produced topic goes here.
PRODUCED: tuple[str, ...] = (
    topics.VIP_TIER_ASSIGNED,
    topics.VIP_TIER_UPDATED,
    topics.VIP_TIER_CUSTOMER_ERASED,
    topics.VIP_TIER_DOWNGRADE_SCHEDULED,
)


class Undecodable(Exception):
    """Bytes that are not a decodable Confluent-framed Avro record; retrying cannot help."""


class UnencodablePayload(Exception):
    """A payload that does not fit its topic's schema (a bug in the producer of the payload)."""


def schema_text(topic: str) -> str:
    """The canonical JSON text of the topic's schema file."""
    name = SCHEMA_FILES[topic]
    raw = resources.files("campaign_service").joinpath("avro", name).read_text(encoding="utf-8")
    return json.dumps(json.loads(raw), separators=(",", ":"), ensure_ascii=False)


def subject(topic: str) -> str:
    return f"{topic}-value"


def _plain_uuids(schema: Any) -> Any:
    """The schema with each `uuid` logical type dropped (read as a string; see the module doc)."""
    if isinstance(schema, dict):
        return {k: _plain_uuids(v) for k, v in schema.items() if not (k == "logicalType" and v == "uuid")}
    if isinstance(schema, list):
        return [_plain_uuids(s) for s in schema]
    return schema


def _parse_for_reading(text: str) -> Any:
    return fastavro.parse_schema(_plain_uuids(json.loads(text)))


class AvroReader:
    """Decodes a topic's values with our copy of its schema as the reader schema (None: the writer's)."""

    def __init__(self, codec: AvroWireCodec, reader_topic: str | None) -> None:
        self._codec = codec
        self._reader = _parse_for_reading(schema_text(reader_topic)) if reader_topic else None
        self._resolved: dict[int, Any] = {}  # schema id -> parsed writer schema

    async def decode(self, data: bytes | None) -> dict[str, Any]:
        """The record in `data`, read with the schema its id names; raises Undecodable."""
        if data is None or len(data) < _HEADER.size:
            raise Undecodable("shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise Undecodable(f"magic byte {magic}, expected {MAGIC}")
        writer = self._resolved.get(schema_id)
        if writer is None:
            writer = self._resolved[schema_id] = await self._codec.writer_schema(schema_id)
        try:
            record = fastavro.schemaless_reader(io.BytesIO(memoryview(data)[_HEADER.size :]), writer, self._reader)
        except Exception as exc:  # any failure to read foreign bytes means "undecodable"
            raise Undecodable(f"Avro body does not match schema id {schema_id}: {type(exc).__name__}") from None
        if not isinstance(record, dict):
            raise Undecodable(f"schema id {schema_id} is not a record schema")
        return record


class AvroWireCodec:
    """Encodes the topics in `produces` (topic -> schema text; default: ours, PRODUCED) and makes
    readers. A test playing another service passes that service's topics and schemas."""

    def __init__(self, registry: AsyncSchemaRegistryClient, produces: Mapping[str, str] | None = None) -> None:
        self.registry = registry
        self._produces = dict(produces) if produces is not None else {t: schema_text(t) for t in PRODUCED}
        self._write: dict[str, tuple[bytes, Any]] = {}  # topic -> (frame header, parsed schema)

    async def register_all(self) -> None:
        """Registers the schemas of the produced topics now (a registry problem shows at start-up)."""
        for topic in self._produces:
            await self._writer(topic)

    async def _writer(self, topic: str) -> tuple[bytes, Any]:
        made = self._write.get(topic)
        if made is not None:
            return made
        text = self._produces.get(topic)
        if text is None:
            raise UnencodablePayload(f"{topic}: not a topic this service produces")
        try:
            schema_id = await self.registry.register_schema(subject(topic), Schema(text, "AVRO"))
        except REGISTRY_ERRORS as exc:
            raise registry_error(exc, f"subject {subject(topic)!r}") from None
        made = self._write[topic] = (_HEADER.pack(MAGIC, schema_id), fastavro.parse_schema(json.loads(text)))
        return made

    async def encode(self, topic: str, payload: Mapping[str, Any]) -> bytes:
        header, parsed = await self._writer(topic)
        buf = io.BytesIO()
        buf.write(header)
        try:
            fastavro.schemaless_writer(buf, parsed, dict(payload), strict_allow_default=True)
        except (ValueError, TypeError, KeyError) as exc:
            raise UnencodablePayload(f"{topic}: {exc}"[:300]) from None
        return buf.getvalue()

    def reader(self, topic: str | None) -> AvroReader:
        """Decodes values with `topic`'s schema file as the reader schema (None: as written)."""
        return AvroReader(self, topic)

    async def writer_schema(self, schema_id: int) -> Any:
        """The parsed schema `schema_id` names; Undecodable if none does or it is not Avro."""
        try:
            schema = await self.registry.get_schema(schema_id)
        except REGISTRY_ERRORS as exc:
            error = registry_error(exc, f"schema id {schema_id}")
            if isinstance(error, UnknownSchemaId):
                raise Undecodable(str(error)) from None
            raise error from None
        if (schema.schema_type or "AVRO") != "AVRO" or schema.schema_str is None:
            raise Undecodable(f"schema id {schema_id} is a {schema.schema_type} schema, not Avro")
        try:
            return _parse_for_reading(schema.schema_str)
        except (ValueError, fastavro.schema.SchemaParseException) as exc:
            raise Undecodable(f"schema id {schema_id} is not an Avro schema: {exc}"[:200]) from None

    async def close(self) -> None:
        await self.registry.aclose()
