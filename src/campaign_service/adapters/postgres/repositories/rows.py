"""Helpers shared by the repositories."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"


def columns(rows: Sequence[object], *fields: str) -> list[list[Any]]:
    """One array per field, for a multi-row INSERT ... SELECT FROM unnest($1, $2, ...)."""
    return [[getattr(row, name) for row in rows] for name in fields]
