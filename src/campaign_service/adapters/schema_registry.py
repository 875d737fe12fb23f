"""The schema registry (Confluent REST API; Apicurio `ccompat/v7` here): confluent-kafka's own async
client, and what its failures mean to us.

The client caches ids both ways for the life of the process (ids never change). It is built with
no retries of its own: a caller that fails (the relay, the consumer) already backs off and
counts its retries, and the library's default (3 retries, up to 20 s apart) would hold a start or
a batch for a minute.
"""

from __future__ import annotations

from confluent_kafka.schema_registry import AsyncSchemaRegistryClient
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError


class RegistryUnavailable(Exception):
    """The registry could not answer now (network, timeout, 5xx); trying again later may work."""


class RegistryRejected(Exception):
    """The registry refused a schema (invalid or incompatible); retrying will not help."""


class UnknownSchemaId(Exception):
    """No schema has this id in the registry."""


def registry_client(base_url: str, *, timeout_s: float = 5.0) -> AsyncSchemaRegistryClient:
    return AsyncSchemaRegistryClient({"url": base_url, "timeout": timeout_s, "max.retries": 0})


# What a call into the registry client raises: the registry's answer (SchemaRegistryError), or,
# when it is down or slow, httpx's transport errors (and OSError from below them).
REGISTRY_ERRORS: tuple[type[BaseException], ...] = (SchemaRegistryError, httpx.HTTPError, OSError, TimeoutError)


def registry_error(exc: BaseException, what: str) -> Exception:
    """Our meaning of a failure of the registry client (`what`: the subject or schema id asked for)."""
    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        if status >= 500:
            return RegistryUnavailable(f"schema registry answered {status} for {what}")
        if status == 404:
            return UnknownSchemaId(f"{what} is not registered")
        return RegistryRejected(f"{what}: registry answered {status}: {exc.error_message}"[:300])
    return RegistryUnavailable(f"schema registry unreachable ({type(exc).__name__}) for {what}")
