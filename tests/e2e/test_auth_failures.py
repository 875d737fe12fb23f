"""Failure paths of authentication through a real service process: a token whose `alg` does not
fit the key's type, and metadata that is not UTF-8. The caller gets UNAUTHENTICATED with a fixed
reason; the log gets one warning line without a traceback, never an error."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from campaign_service.api.pb import auth_pb2, campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.access import SCOPE_READ
from tests.auth_server import auth_server, valid
from tests.conftest import ServiceProcess, start_service
from tests.e2e.test_hostile_input import HOSTILE_METADATA, REFUSED_BY_GRPC_CORE, raw_h2_call
from tests.e2e.test_logs import log_lines
from tests.tokens import SESSION_ISSUER, auth_channel


def _rsa_public_key_files(tmp: Path, kid: str) -> dict[str, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = tmp / "rsa.pem"
    pem.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key)), "kid": kid, "use": "sig"}  # no `alg`, as many IdPs publish
    jwks = tmp / "rsa-jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    return {"CAMPAIGN_JWT_PUBLIC_KEY_FILE": pem, "CAMPAIGN_JWT_JWKS_FILE": jwks}


async def _wait_for(service: ServiceProcess, predicate: Any, timeout: float = 5) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    lines = log_lines(service)
    while time.monotonic() < deadline and not any(predicate(line) for line in lines):
        await asyncio.sleep(0.05)
        lines = log_lines(service)
    return lines


def _no_error_or_traceback(lines: list[dict[str, Any]]) -> None:
    for line in lines:
        assert line["level"] not in ("error", "critical"), line
        assert "exception" not in line, line
        assert "Traceback" not in json.dumps(line), line


@pytest.mark.parametrize("source", ["CAMPAIGN_JWT_PUBLIC_KEY_FILE", "CAMPAIGN_JWT_JWKS_FILE"])
async def test_token_alg_not_fitting_the_key_type_is_invalid_token(
    database: Any, tmp_path: Path, new_merchant: Any, source: str
) -> None:
    """An ES256 token against an RSA key (PEM file, or a JWKS key without `alg`): once this was
    UNKNOWN "Unexpected <class 'TypeError'>: Expecting a PEM-formatted key." with an error
    traceback per request, and no valid signature was needed to cause it."""
    kid = "rsa-1"
    files = _rsa_public_key_files(tmp_path, kid)
    env: dict[str, str | None] = {"CAMPAIGN_JWT_PUBLIC_KEY_FILE": None, "CAMPAIGN_JWT_JWKS_FILE": None}
    env[source] = str(files[source])
    svc = start_service(database, tmp_path, env)
    try:
        merchant = await new_merchant()
        # Signed by an EC key the service does not know; its header names the RSA key's id.
        token = SESSION_ISSUER.mint(merchant, headers={"kid": kid})
        assert jwt.get_unverified_header(token)["alg"] == "ES256"
        async with auth_channel(svc.target, token) as channel:
            stub = campaign_grpc.CampaignServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant)))
                assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        lines = await _wait_for(svc, lambda line: line.get("grpc_code") == "UNAUTHENTICATED")
        _no_error_or_traceback(lines)
    finally:
        svc.stop()


async def test_non_utf8_metadata_logs_a_rate_limited_warning_without_traceback(
    service: ServiceProcess, new_merchant: Any
) -> None:
    """`authorization: Bearer \\xff\\xfe` from an unauthenticated caller: UNAUTHENTICATED, and at
    most one warning line per second for the cause, no traceback, never an error line."""
    merchant = await new_merchant()
    body = pb.ListVIPTiersRequest(merchant_id=str(merchant)).SerializeToString()
    marker = f"m-{uuid.uuid4().hex[:8]}"
    async with auth_channel(service.target) as channel:  # a line to find where this test starts
        await campaign_grpc.CampaignServiceStub(channel).ListVIPTiers(
            pb.ListVIPTiersRequest(merchant_id=str(merchant)), metadata=(("x-correlation-id", marker),)
        )
    start = len(await _wait_for(service, lambda line: line.get("correlation_id") == marker))
    started = time.monotonic()
    for _ in range(20):
        result = await raw_h2_call(service.grpc_port, [(b"authorization", b"Bearer \xff\xfe\xfd")], body)
        assert result.get("grpc-status") == "16", result
    elapsed = time.monotonic() - started
    lines = (await _wait_for(service, lambda line: "UTF-8" in line.get("message", "")))[start:]
    _no_error_or_traceback(lines)
    warnings = [line for line in lines if line["level"] == "warning"]
    assert warnings, lines
    assert all("UTF-8" in w["message"] for w in warnings), warnings
    assert 1 <= len(warnings) <= int(elapsed) + 1, warnings


async def test_auth_service_max_cache_seconds_makes_a_revocation_take_effect_sooner(
    database: Any, tmp_path: Path, new_merchant: Any
) -> None:
    """The Auth Service answers `max_cache_seconds = 1`: a token revoked there is refused within
    about a second, not after CAMPAIGN_AUTH_CACHE_MAX_TTL_S (300 s), and is reused until then."""
    merchant = await new_merchant()
    request = pb.ListVIPTiersRequest(merchant_id=str(merchant))
    async with auth_server() as auth:
        auth.servicer.tokens["opaque-r"] = valid("alice", merchant, [SCOPE_READ], max_cache_seconds=1)
        svc = start_service(
            database, tmp_path, {"AUTH_HOST": auth.target, "CAMPAIGN_JWT_JWKS_FILE": None, "CAMPAIGN_JWT_ISSUER": None}
        )
        try:
            async with auth_channel(svc.target, "opaque-r") as channel:
                stub = campaign_grpc.CampaignServiceStub(channel)
                await stub.ListVIPTiers(request)
                revoked_at = time.monotonic()
                auth.servicer.tokens["opaque-r"] = auth_pb2.ValidateTokenResponse(
                    valid=False, reason=auth_pb2.INVALID_REASON_REVOKED
                )
                await stub.ListVIPTiers(request)  # still within the second it may be reused
                assert len(auth.servicer.calls) == 1
                await asyncio.sleep(max(0.0, revoked_at + 1.05 - time.monotonic()))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ListVIPTiers(request)
                assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "token revoked")
        finally:
            svc.stop()


async def test_hostile_metadata_leaves_no_error_line_or_traceback(service: ServiceProcess, new_merchant: Any) -> None:
    """Every hostile metadata case of test_hostile_input.py, those grpc-core refuses included:
    bad caller input is never an error line or a traceback in the log."""
    merchant = await new_merchant()
    body = pb.ListVIPTiersRequest(merchant_id=str(merchant)).SerializeToString()
    start = len(log_lines(service))
    for metadata in [*HOSTILE_METADATA, *(m for m, _ in REFUSED_BY_GRPC_CORE)]:
        result = await raw_h2_call(service.grpc_port, metadata, body)
        assert result.get("grpc-status") in ("13", "16"), result
    await asyncio.sleep(0.5)  # the last request's lines
    lines = log_lines(service)[start:]
    assert lines
    _no_error_or_traceback(lines)
