"""Scopes and tenant authorization, principals from untrusted claims, bearer metadata parsing,
strict UUIDs, and log redaction of tokens."""

from __future__ import annotations

import json
import logging
import uuid

import pytest

from campaign_service import logs
from campaign_service.adapters.auth.principals import make_principal, principal_from_claims
from campaign_service.api.auth import METHOD_ACCESS, bearer_token
from campaign_service.domain.access import (
    SCOPE_ADMIN,
    SCOPE_READ,
    SCOPE_SERVICE,
    SCOPE_WRITE,
    Access,
    Principal,
    authorize,
)
from campaign_service.domain.errors import InvalidArgument, PermissionDenied
from campaign_service.domain.ids import parse_uuid
from campaign_service.service.errors import Unauthenticated

A, B = uuid.uuid4(), uuid.uuid4()


def principal(merchant: uuid.UUID | None, *scopes: str) -> Principal:
    return Principal("alice", merchant, frozenset(scopes), 2e9)


ALLOWED = [
    (principal(A, SCOPE_READ), A, Access.READ),
    (principal(A, SCOPE_WRITE), A, Access.READ),
    (principal(A, SCOPE_WRITE), A, Access.WRITE),
    (principal(None, SCOPE_SERVICE), B, Access.READ),
    (principal(A, SCOPE_SERVICE), B, Access.READ),
    (principal(None, SCOPE_ADMIN), B, Access.WRITE),
    (principal(None, SCOPE_ADMIN), None, Access.ADMIN),
    (principal(None, SCOPE_ADMIN), A, Access.ADMIN),
]
DENIED = [
    (principal(A), A, Access.READ, "lacks the tiers:read"),
    (principal(A, SCOPE_READ), A, Access.WRITE, "lacks the tiers:write"),
    (principal(A, SCOPE_READ), B, Access.READ, "not valid for this merchant"),
    (principal(A, SCOPE_WRITE), B, Access.WRITE, "not valid for this merchant"),
    (principal(None, SCOPE_WRITE), A, Access.WRITE, "not valid for this merchant"),
    (principal(None, SCOPE_SERVICE), B, Access.WRITE, "lacks the tiers:write"),
    (principal(None, SCOPE_SERVICE, SCOPE_WRITE), B, Access.WRITE, "not valid for this merchant"),
    (principal(A, SCOPE_WRITE, SCOPE_READ), A, Access.ADMIN, "lacks the campaign:admin"),
    (principal(A, SCOPE_SERVICE), None, Access.ADMIN, "lacks the campaign:admin"),
]


@pytest.mark.parametrize(("who", "merchant", "access"), ALLOWED)
def test_allowed(who: Principal, merchant: uuid.UUID | None, access: Access) -> None:
    authorize(who, merchant, access)


@pytest.mark.parametrize(("who", "merchant", "access", "why"), DENIED)
def test_denied(who: Principal, merchant: uuid.UUID | None, access: Access, why: str) -> None:
    with pytest.raises(PermissionDenied, match=why):
        authorize(who, merchant, access)


def test_every_write_rpc_needs_the_write_scope() -> None:
    writes = {m for m, a in METHOD_ACCESS.items() if a is Access.WRITE}
    assert writes == {"CreateVIPTier", "UpdateVIPTier", "DeleteVIPTier"}


def test_principal_from_claims_reads_scope_string_or_scp_list_and_drops_unknown_scopes() -> None:
    p = principal_from_claims(
        {"sub": "bob", "merchant_id": str(A), "scope": "tiers:read root", "exp": 5}, "merchant_id"
    )
    assert (p.subject, p.merchant_id, p.scopes, p.expires_at) == ("bob", A, frozenset({SCOPE_READ}), 5.0)
    p = principal_from_claims({"sub": "svc", "scp": ["campaign:service", 7], "exp": 5}, "merchant_id")
    assert (p.merchant_id, p.scopes) == (None, frozenset({SCOPE_SERVICE}))
    p = principal_from_claims({"sub": "x", "tenant": str(B).upper(), "exp": 5}, "tenant")
    assert p.merchant_id == B


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "", "exp": 5},
        {"sub": 7, "exp": 5},
        {"sub": "a\nb", "exp": 5},
        {"sub": "x" * 257, "exp": 5},
        {"sub": "x", "exp": "5"},
        {"sub": "x", "exp": True},
        {"sub": "x", "exp": 5, "merchant_id": "not-a-uuid"},
        {"sub": "x", "exp": 5, "merchant_id": "{" + str(A).replace("-", "") + "}"},
        {"sub": "x", "exp": 5, "merchant_id": 12},
        {"sub": "x", "exp": 5, "scope": ["tiers:read"]},
    ],
)
def test_principal_from_malformed_claims_is_unauthenticated(claims: dict[str, object]) -> None:
    with pytest.raises(Unauthenticated, match=r"^invalid token$"):
        principal_from_claims(claims, "merchant_id")


def test_make_principal_accepts_empty_merchant_as_unbound() -> None:
    assert make_principal("svc", "", ["campaign:admin"], 1.0).merchant_id is None


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ([("authorization", "Bearer abc.def.ghi")], "abc.def.ghi"),
        ([("x-other", "1"), ("authorization", "bearer  opaque+/=")], "opaque+/="),
    ],
)
def test_bearer_token(metadata: list[tuple[str, str]], token: str) -> None:
    assert bearer_token(metadata) == token


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (None, "missing bearer token"),
        ([], "missing bearer token"),
        ([("authorization-bin", b"x")], "missing bearer token"),
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "more than one"),
        ([("authorization", "Basic dXNlcjpwYXNz")], "malformed"),
        ([("authorization", "Bearer")], "malformed"),
        ([("authorization", "Bearer a b")], "malformed"),
        ([("authorization", "Bearer a\x00b")], "malformed"),
        ([("authorization", "Bearer ' OR 1=1 --")], "malformed"),
        ([("authorization", "Bearer " + "a" * 8193)], "malformed"),
        ([("authorization", b"Bearer abc")], "malformed"),
    ],
)
def test_bad_authorization_metadata(metadata: list[tuple[str, str]] | None, reason: str) -> None:
    with pytest.raises(Unauthenticated, match=reason):
        bearer_token(metadata)


@pytest.mark.parametrize(
    "value",
    [
        "{123e4567-e89b-12d3-a456-426614174000}",
        "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
        "123e4567e89b12d3a456426614174000",
        "123e4567-e89b-12d3-a456-42661417400_",
        "-123e4567e89b12d3a456426614174000---",
        "١٢٣e4567-e89b-12d3-a456-426614174000",  # Arabic-Indic digits: int() takes them
        "123e4567-e89b-12d3-a456-426614174000\n",
        "",
    ],
)
def test_only_canonical_uuids_are_accepted(value: str) -> None:
    with pytest.raises(InvalidArgument, match="merchant_id: must be a UUID"):
        parse_uuid(value, "merchant_id")


def test_canonical_uuid_in_either_case_is_accepted() -> None:
    assert parse_uuid(str(A).upper(), "merchant_id") == A


def test_logs_redact_tokens_whoever_logs_them(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.tokens import mint_token

    token = mint_token()
    logs.configure("info")
    try:
        logging.getLogger("some.library").warning("header was %s", f"Bearer {token}")
        logging.getLogger("other").error("raw %s and opaque", token, extra={"meta": [("authorization", "BEARER abc")]})
    finally:
        logging.getLogger().handlers.clear()
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    assert token not in out
    assert token.split(".")[1] not in out
    assert "abc" not in out
    assert lines[0]["message"] == "header was [REDACTED]"


def test_a_log_record_stays_on_one_line_whatever_the_caller_sent(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info")
    try:
        logging.getLogger("x").warning("got", extra={"merchant_id": "a\u2028b\u2029c\x85d\ne\x1cf"})
    finally:
        logging.getLogger().handlers.clear()
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    assert json.loads(out)["merchant_id"] == "a\u2028b\u2029c\x85d\ne\x1cf"
