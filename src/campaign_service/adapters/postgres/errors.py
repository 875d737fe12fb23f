"""What asyncpg's exceptions mean to a caller, decided in this one place: by SQLSTATE class for
the server's errors, by type and cause for the client's, never by message text.

Unavailable (retryable: the statement did not take effect, or the transaction was rolled back):
  * SQLSTATE class 08 connection exception, 53 insufficient resources (too many connections,
    out of memory, disk full), 57 operator intervention (57014 query_canceled - our statement
    timeout -, 57P01 admin_shutdown, 57P03 cannot_connect_now), 40 transaction rollback
    (serialization failure, deadlock);
  * any server error after which the connection is closed (a FATAL such as 25P03
    idle_in_transaction_session_timeout ends the session whatever its class);
  * on the client side: OSError and TimeoutError (network, pool acquire timeout),
    InternalClientError (asyncpg's protocol met the server's FATAL while starting a statement:
    "another operation is in progress"), and an InterfaceError raised because the connection is
    gone - asyncpg closed it, or handed it back to the pool when it died (we never release a
    connection early) - or raised while handling one of the above (its `__context__`).
Everything else (syntax errors, an InterfaceError on a live connection) stays a fault of ours;
a refused tier write (unique or check violation) is translated by the tier repository with the
helpers at the end, which know the write's context.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from campaign_service.domain.errors import (
    AlreadyExists,
    CampaignError,
    FieldViolation,
    InvalidArgument,
    VersionConflict,
)
from campaign_service.service.errors import Unavailable

# SQLSTATE classes (the first two characters) that mean "the database cannot serve this now".
UNAVAILABLE_CLASSES = frozenset({"08", "53", "57", "40"})
_CLIENT_SIDE = (asyncpg.InternalClientError, OSError, TimeoutError)


def _connection_gone(conn: Any) -> bool:
    """Whether the pooled connection `conn` (a pool proxy) was closed or handed back by asyncpg."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True  # the proxy was released: asyncpg does that when the connection dies


def _unavailable_cause(exc: BaseException) -> str | None:
    """The name of what made `exc` a database outage, following its causes; None when it is not one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, asyncpg.PostgresError):
            if str(current.sqlstate or "")[:2] in UNAVAILABLE_CLASSES:
                return type(current).__name__
        elif isinstance(current, _CLIENT_SIDE):
            return type(current).__name__
        current = current.__cause__ or current.__context__
    return None


def unavailable(exc: BaseException, conn: Any = None) -> Unavailable | None:
    """The Unavailable that `exc` (raised while using `conn`, when given) means, or None."""
    if isinstance(exc, CampaignError):
        return None  # already says what it means
    cause = _unavailable_cause(exc)
    database_error = isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError)
    if cause is None and database_error and conn is not None and _connection_gone(conn):
        cause = "connection lost"
    if cause is None:
        return None
    return Unavailable(f"database unavailable ({cause})")


@asynccontextmanager
async def translated(conn: Any = None) -> AsyncIterator[None]:
    """Re-raises an outage of the database (while using `conn`, when given) as Unavailable;
    anything else passes unchanged."""
    try:
        yield
    except Exception as exc:
        error = unavailable(exc, conn)
        if error is None:
            raise
        raise error from exc


def _unique_failed(exc: asyncpg.UniqueViolationError, tier_id: str) -> CampaignError:
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
