"""The service's one error tree: every error that may end an RPC derives from `CampaignError` and
names, where it is defined, the gRPC status it answers and its metric label.

    class NotFound(CampaignError, code="NOT_FOUND", label="not_found"): ...

The code is the name of a `grpc.StatusCode` member (domain/ imports nothing outside domain/;
api/errors.py turns the name into the status). A subclass that names neither inherits both.
Where each error lives follows who raises it: rules of the domain here; failures of a port the
use cases depend on (`Unavailable`, `Unauthenticated`) in service/errors.py; an adapter translates
its library's exceptions into these at its edge (adapters/postgres/errors.py for asyncpg).
Anything else reaching the API is a fault of ours: INTERNAL with a fixed message, logged once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

# The status names a CampaignError may carry (grpc.StatusCode member names), checked at class
# creation so a typo fails at import rather than at the first error.
STATUS_NAMES = frozenset(
    {
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class CampaignError(Exception):
    """Base of errors with a meaningful status for the caller; `message` is what the caller
    reads, so it never holds internals (SQL, library messages, tokens)."""

    code: ClassVar[str] = "INTERNAL"
    label: ClassVar[str] = "internal"

    def __init_subclass__(cls, *, code: str | None = None, label: str | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            if code not in STATUS_NAMES:
                raise TypeError(f"{cls.__name__}: {code!r} is not a gRPC status name")
            cls.code = code
        if label is not None:
            cls.label = label

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class InvalidArgument(CampaignError, code="INVALID_ARGUMENT", label="invalid_argument"):
    violations: list[FieldViolation] = field(default_factory=list)

    def __post_init__(self) -> None:
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text or "invalid argument")


def invalid(field_path: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field_path, description)])


class NotFound(CampaignError, code="NOT_FOUND", label="not_found"):
    pass


class AlreadyExists(CampaignError, code="ALREADY_EXISTS", label="already_exists"):
    pass


class VersionConflict(CampaignError, code="ABORTED", label="version_conflict"):
    """The stored version differs from the one the caller expected (optimistic concurrency)."""


class FailedPrecondition(CampaignError, code="FAILED_PRECONDITION", label="failed_precondition"):
    pass


class PermissionDenied(CampaignError, code="PERMISSION_DENIED", label="permission_denied"):
    """Valid credentials that do not allow this request (domain/access.py decides)."""
