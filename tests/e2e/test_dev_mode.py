"""The embedded default keeps authentication on with its own key pair and `dev-token`; a
production configuration refuses to start without a verifier and never mints tokens."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import ServiceProcess, free_port, wait_ready
from tests.tokens import auth_channel


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CAMPAIGN_") and k not in ("KAFKA_BROKER", "REDIS_HOST", "AUTH_HOST")
    }
    return {**env, **extra}


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "campaign_service", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Newcomer:
    svc: ServiceProcess
    merchant: uuid.UUID
    other: uuid.UUID
    token: str
    foreign_token: str


@pytest.fixture
def newcomer() -> Iterator[Newcomer]:
    """What README tells a newcomer: serve, `merchants add`, `dev-token`, all on the embedded default."""
    # As root, pgserver runs PostgreSQL as its own user, which cannot enter pytest's 0700 tmp dirs.
    tmp_path = Path(tempfile.mkdtemp(prefix="campaign-embedded-"))
    tmp_path.chmod(0o755)
    grpc_port, http_port = free_port(), free_port()
    env = clean_env(
        CAMPAIGN_DATA_DIR=str(tmp_path / "data"),
        CAMPAIGN_BIND_HOST="127.0.0.1",
        CAMPAIGN_GRPC_PORT=str(grpc_port),
        CAMPAIGN_HTTP_PORT=str(http_port),
    )
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "campaign_service", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    svc = ServiceProcess(proc, grpc_port, http_port, log_path)
    try:
        wait_ready(svc, timeout=90)
        merchant, other = uuid.uuid4(), uuid.uuid4()
        for m in (merchant, other):
            assert cli("merchants", "add", str(m), env=env).returncode == 0
        minted = cli("dev-token", "--merchant", str(merchant), "--subject", "newcomer", env=env)
        assert minted.returncode == 0, minted.stderr
        # the same command against another data dir signs with another key
        foreign = cli("dev-token", "--merchant", str(merchant), env={**env, "CAMPAIGN_DATA_DIR": str(tmp_path / "x")})
        yield Newcomer(svc, merchant, other, minted.stdout.strip(), foreign.stdout.strip())
        assert (tmp_path / "data" / "auth" / "dev-signing-key.pem").stat().st_mode & 0o777 == 0o600
    finally:
        assert svc.stop() == 0
        shutil.rmtree(tmp_path, ignore_errors=True)


async def test_newcomer_flow_on_the_embedded_default(newcomer: Newcomer) -> None:
    svc, merchant = newcomer.svc, str(newcomer.merchant)
    assert '"auth": "dev"' in svc.logs()
    assert newcomer.token.count(".") == 2
    async with auth_channel(svc.target, newcomer.token) as channel:
        stub = campaign_grpc.CampaignServiceStub(channel)
        await stub.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=merchant, tier=pb.VIPTier(tier_id="gold", name="Gold")))
        assert (await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=merchant, tier_id="gold"))).name == "Gold"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(newcomer.other)))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.insecure_channel(svc.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await campaign_grpc.CampaignServiceStub(channel).ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=merchant))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with auth_channel(svc.target, newcomer.foreign_token) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await campaign_grpc.CampaignServiceStub(channel).ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=merchant))
        assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "invalid token")


def test_production_configuration_without_a_verifier_refuses_to_start(database: Any, tmp_path: Path) -> None:
    env = clean_env(
        CAMPAIGN_DB_DSN=database.app_dsn,
        CAMPAIGN_DB_OWNER_DSN=database.owner_dsn,
        CAMPAIGN_DATA_DIR=str(tmp_path / "data"),
        CAMPAIGN_GRPC_PORT=str(free_port()),
        CAMPAIGN_HTTP_PORT=str(free_port()),
    )
    result = cli("serve", env=env, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: AUTH_HOST: ")
    assert "CAMPAIGN_JWT_JWKS_FILE" in lines[0]
    assert not (tmp_path / "data").exists()  # no key pair made


@pytest.mark.parametrize(
    "env",
    [
        {"CAMPAIGN_DB_HOST": "127.0.0.1"},
        {"CAMPAIGN_DB_DSN": "postgresql://campaign_app@127.0.0.1/x"},
        {"AUTH_HOST": "127.0.0.1:1"},
        {"CAMPAIGN_JWT_JWKS_URL": "http://127.0.0.1:1/jwks.json"},
    ],
)
def test_dev_token_is_refused_outside_the_embedded_default(tmp_path: Path, env: dict[str, str]) -> None:
    result = cli("dev-token", "--merchant", str(uuid.uuid4()), env=clean_env(CAMPAIGN_DATA_DIR=str(tmp_path), **env))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "dev-token works only on the embedded default" in result.stderr
    assert not (tmp_path / "auth").exists()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CAMPAIGN_JWT_ALGORITHMS": "HS256"}, "CAMPAIGN_JWT_ALGORITHMS"),
        ({"CAMPAIGN_JWT_ALGORITHMS": "none"}, "CAMPAIGN_JWT_ALGORITHMS"),
        ({"CAMPAIGN_JWT_JWKS_FILE": "/a", "CAMPAIGN_JWT_PUBLIC_KEY_FILE": "/b"}, "CAMPAIGN_JWT_PUBLIC_KEY_FILE"),
        ({"CAMPAIGN_JWT_JWKS_URL": "file:///etc/passwd"}, "CAMPAIGN_JWT_JWKS_URL"),
        ({"CAMPAIGN_TLS_CERT_FILE": "/a"}, "CAMPAIGN_TLS_KEY_FILE"),
        ({"CAMPAIGN_TLS_CLIENT_CA_FILE": "/a"}, "CAMPAIGN_TLS_CLIENT_CA_FILE"),
        ({"AUTH_HOST": "no port"}, "AUTH_HOST"),
        ({"CAMPAIGN_JWT_JWKS_FILE": "/does/not/exist"}, "CAMPAIGN_JWT_JWKS_FILE"),
        (
            {"CAMPAIGN_TLS_CERT_FILE": "/does/not/exist", "CAMPAIGN_TLS_KEY_FILE": "/nor/this"},
            "CAMPAIGN_TLS_CERT_FILE",
        ),
    ],
)
def test_bad_security_settings_fail_with_one_line_naming_the_variable(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = cli("serve", env=clean_env(CAMPAIGN_DATA_DIR=str(tmp_path / "data"), **env), timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"configuration error: {variable}"), lines[0]
