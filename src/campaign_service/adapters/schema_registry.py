"""Client of a Confluent-compatible Schema Registry REST API (Confluent, Apicurio `ccompat/v7`)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiohttp

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryUnavailable(Exception):
    """The registry could not answer now (network, timeout, 5xx); trying again later may work."""


class RegistryRejected(Exception):
    """The registry refused a schema (invalid or incompatible); retrying will not help."""


class UnknownSchemaId(Exception):
    """No schema has this id in the registry."""


class SchemaRegistryClient:
    """Registers and fetches schemas; ids are cached for the life of the process (they never change)."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers={"Accept": _CONTENT_TYPE})
        return self._session

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            async with self._http().request(
                method,
                f"{self._base}{path}",
                data=json.dumps(body) if body is not None else None,
                headers={"Content-Type": _CONTENT_TYPE} if body is not None else None,
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RegistryUnavailable(f"schema registry unreachable: {type(exc).__name__}") from None
        if status >= 500:
            raise RegistryUnavailable(f"schema registry answered {status}")
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            raise RegistryUnavailable(f"schema registry answered {status} with a non-JSON body") from None

    async def register(self, subject: str, schema: str) -> int:
        """The id of `schema` under `subject`, registering it (idempotently) when new."""
        cached = self._ids.get((subject, schema))
        if cached is not None:
            return cached
        status, body = await self._call("POST", f"/subjects/{quote(subject, safe='')}/versions", {"schema": schema})
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("id"), int):
            message = body.get("message") if isinstance(body, dict) else None
            raise RegistryRejected(f"subject {subject!r}: registry answered {status}: {message or body!r}"[:300])
        schema_id = int(body["id"])
        self._ids[(subject, schema)] = schema_id
        self._schemas[schema_id] = schema
        return schema_id

    async def schema(self, schema_id: int) -> str:
        """The schema text registered under `schema_id`."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        status, body = await self._call("GET", f"/schemas/ids/{schema_id}")
        if status == 404:
            raise UnknownSchemaId(f"schema id {schema_id} is not registered")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("schema"), str):
            raise RegistryUnavailable(f"schema registry answered {status} for schema id {schema_id}")
        text: str = body["schema"]
        self._schemas[schema_id] = text
        return text

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
