"""Domain errors; the API layer maps each to a gRPC status code."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of errors with a meaningful status for the caller (never an internal fault)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class InvalidArgument(DomainError):
    violations: list[FieldViolation] = field(default_factory=list)

    def __post_init__(self) -> None:
        text = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text or "invalid argument")


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class VersionConflict(DomainError):
    """The stored version differs from the one the caller expected (optimistic concurrency)."""


class FailedPrecondition(DomainError):
    pass


class Unavailable(DomainError):
    """A dependency (the database) is down or too slow right now; the caller may retry."""


def invalid(field_path: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field_path, description)])


class Unauthenticated(DomainError):
    """No credentials, or credentials that are not valid; the message says which, nothing more."""


class PermissionDenied(DomainError):
    """Valid credentials that do not allow this request."""
