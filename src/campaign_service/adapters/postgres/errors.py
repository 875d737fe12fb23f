"""asyncpg errors as the service's errors: which failures mean "the database is unavailable"
(retryable), and what a refused tier write tells the caller."""

from __future__ import annotations

import asyncpg

from campaign_service.domain.errors import (
    AlreadyExists,
    DomainError,
    FieldViolation,
    InvalidArgument,
    VersionConflict,
)


def _unique_failed(exc: asyncpg.UniqueViolationError, tier_id: str) -> DomainError:
    # Partition indexes carry their own names (vip_tiers_p3_..._default...), so match by part.
    if "default" in (exc.constraint_name or ""):
        return VersionConflict("another default tier was set concurrently; retry")
    return AlreadyExists(f"tier {tier_id!r} already exists")


def _check_failed(exc: asyncpg.CheckViolationError) -> InvalidArgument:
    # Trigger messages start with the field path ("benefits.custom_perks: ..."); constraint
    # names are ours. Neither carries SQL or data.
    message = str(exc.message) if exc.constraint_name is None else f"violates {exc.constraint_name}"
    field, _, description = message.partition(": ")
    return InvalidArgument([FieldViolation(f"tier.{field}" if description else "tier", description or message)])


_UNAVAILABLE = (
    asyncpg.QueryCanceledError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.OperatorInterventionError,  # e.g. the server shutting down (admin_shutdown)
    asyncpg.TransactionRollbackError,  # deadlock or serialization failure: rolled back, retryable
    # asyncpg's protocol met the server's FATAL "terminating connection" (PostgreSQL killed or
    # restarted, backend terminated) while starting a statement or resetting the connection:
    # "another operation (2) is in progress". The pool drops that connection.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def _lost_connection(exc: asyncpg.InterfaceError) -> bool:
    """When the connection dies inside a unit of work, asyncpg hands it back to the pool at once,
    and the next use of it (a statement, the transaction's exit) is an InterfaceError saying so.
    We never release a connection early ourselves; any other InterfaceError is our bug."""
    message = str(exc)
    return (
        isinstance(exc.__context__, _UNAVAILABLE)
        or "the underlying connection is closed" in message
        or "released back to the pool" in message
    )
