"""The one error tree: each class names its gRPC status and metric label; the API answers the
status the class names; asyncpg's exceptions are classified by SQLSTATE class and cause."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import asyncpg
import grpc
import pytest

import campaign_service
from campaign_service.adapters.postgres.errors import unavailable
from campaign_service.api.interceptors import status_for
from campaign_service.domain.errors import CampaignError, FieldViolation, InvalidArgument, NotFound
from campaign_service.logs import CallerInputLimiter, GrpcUndecodableFilter
from campaign_service.service.errors import RateLimited, Unavailable


def _all_error_classes() -> list[type[CampaignError]]:
    for module in pkgutil.walk_packages(campaign_service.__path__, "campaign_service."):
        if ".gen" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found, todo = [], [CampaignError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("campaign_service."):
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_names_a_grpc_status_and_a_label() -> None:
    classes = _all_error_classes()
    assert len(classes) >= 9
    for cls in classes:
        assert cls.code in grpc.StatusCode.__members__, cls
        assert cls.label.isidentifier(), cls
        assert cls.label.islower(), cls
    labels = [c.label for c in classes]
    assert len(labels) == len(set(labels)), labels


def test_a_class_without_its_own_code_inherits_it_and_the_base_is_internal() -> None:
    class Gone(NotFound):
        pass

    class Unforeseen(CampaignError):
        pass

    assert (Gone.code, Gone.label) == ("NOT_FOUND", "not_found")
    # Once an error class missing from the API's table answered FAILED_PRECONDITION.
    assert status_for(Unforeseen("x")).code == grpc.StatusCode.INTERNAL.value[0]


def test_a_code_that_is_not_a_grpc_status_fails_at_class_creation() -> None:
    with pytest.raises(TypeError):

        class Typo(CampaignError, code="NOT_FOUNDD", label="typo"):
            pass


def test_status_carries_the_class_code_message_and_details() -> None:
    status = status_for(InvalidArgument([FieldViolation("tier.name", "blank")]))
    assert (status.code, status.message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "tier.name: blank")
    assert len(status.details) == 1
    limited = status_for(RateLimited(0.25))
    assert limited.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert limited.message == "rate limit exceeded for this merchant; retry in 250 ms"
    assert limited.details[0].type_url.endswith("google.rpc.RetryInfo")


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__context__ = inner
    return outer


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.ConnectionFailureError("08006"),
        asyncpg.exceptions.ConnectionDoesNotExistError("08003"),
        asyncpg.exceptions.TooManyConnectionsError("53300"),
        asyncpg.exceptions.DiskFullError("53100"),
        asyncpg.exceptions.OutOfMemoryError("53200"),
        asyncpg.exceptions.QueryCanceledError("57014"),
        asyncpg.exceptions.AdminShutdownError("57P01"),
        asyncpg.exceptions.CannotConnectNowError("57P03"),
        asyncpg.exceptions.SerializationError("40001"),
        asyncpg.exceptions.DeadlockDetectedError("40P01"),
        asyncpg.exceptions.InternalClientError("another operation is in progress"),
        ConnectionResetError(),
        TimeoutError(),
        _chained(asyncpg.InterfaceError("whatever it says"), ConnectionResetError()),
    ],
    ids=lambda e: type(e).__name__,
)
def test_outages_are_unavailable(exc: BaseException) -> None:
    error = unavailable(exc)
    assert isinstance(error, Unavailable)
    assert error.message.startswith("database unavailable (")


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UniqueViolationError("23505"),
        asyncpg.exceptions.UndefinedTableError("42P01"),
        asyncpg.exceptions.DataError("22000"),
        # Its message says "closed", but nothing says the connection is: a bug of ours.
        asyncpg.InterfaceError("the underlying connection is closed"),
        NotFound("tier"),
        ValueError("x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_errors_are_not_outages(exc: BaseException) -> None:
    assert unavailable(exc) is None


def test_caller_input_lines_are_limited_per_cause_and_count_what_they_left_out() -> None:
    now = [100.0]
    limiter = CallerInputLimiter(interval_s=1.0, clock=lambda: now[0])
    assert limiter.admit("metadata_not_utf8") == 0
    assert [limiter.admit("metadata_not_utf8") for _ in range(5)] == [None] * 5
    assert limiter.admit("token_alg_key_mismatch") == 0  # another cause has its own budget
    now[0] += 1.0
    assert limiter.admit("metadata_not_utf8") == 5
    assert limiter.admit("metadata_not_utf8") is None


def test_grpc_undecodable_metadata_record_becomes_a_warning_without_value_or_traceback() -> None:
    now = [0.0]
    grpc_filter = GrpcUndecodableFilter(CallerInputLimiter(clock=lambda: now[0]))

    def record() -> logging.LogRecord:
        try:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        except UnicodeDecodeError:
            return logging.LogRecord(
                "grpc._cython.cygrpc",
                logging.ERROR,
                "x.pyx",
                48,
                "Invalid encoding on %s",
                (b"Bearer \xff",),
                sys.exc_info(),
            )

    first = record()
    assert grpc_filter.filter(first)
    assert (first.levelno, first.exc_info, first.args) == (logging.WARNING, None, ())
    assert "xff" not in first.getMessage()
    assert not grpc_filter.filter(record())  # within the second: left out
    other = logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "x.pyx", 1, "something else", (), None)
    assert grpc_filter.filter(other)
    assert other.levelno == logging.ERROR  # only the undecodable-metadata line is rewritten
