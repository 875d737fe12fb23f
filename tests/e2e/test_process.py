"""The process around the API: HTTP probes, gRPC health and reflection, CLI, configuration errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from campaign_service.adapters.postgres import migrations
from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import ServiceProcess, free_port, start_service, wait_ready
from tests.tokens import auth_channel


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def without_service_settings() -> dict[str, str]:
    """The test environment minus what configures the service (scripts/test exports KAFKA_BROKER)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CAMPAIGN_") and k not in ("KAFKA_BROKER", "REDIS_HOST", "AUTH_HOST")
    }


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "campaign_service", *args],
        env={**without_service_settings(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_http_probes(service: Any, stub: Any, new_merchant: Any) -> None:
    assert http_get(service.http_port, "/health") == (200, '{"status": "ok"}')
    status, body = http_get(service.http_port, "/ready")
    assert status == 200
    assert json.loads(body) == {"status": "ready", "checks": {"postgres": "ok"}}
    merchant = await new_merchant()
    await stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant)))
    status, text = http_get(service.http_port, "/metrics")
    assert status == 200
    assert 'vip_tier_lookup_latency_seconds_count{cache="none",method="ListVIPTiers"}' in text
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="ListVIPTiers"}' in text


async def test_grpc_health_and_reflection(service: Any) -> None:
    async with grpc.aio.insecure_channel(service.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "campaign.v1.CampaignService"):
            resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for resp in responses:
            names = {s.name for s in resp.list_services_response.service}
            assert "campaign.v1.CampaignService" in names
            assert "grpc.health.v1.Health" in names
            break


async def test_correlation_id_is_echoed(service: Any, stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    call = stub.ListVIPTiers(
        pb.ListVIPTiersRequest(merchant_id=str(merchant)), metadata=(("x-correlation-id", "req-123"),)
    )
    await call
    assert ("x-correlation-id", "req-123") in tuple(await call.trailing_metadata())
    call = stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(merchant)))
    await call
    generated = dict(await call.trailing_metadata())["x-correlation-id"]
    assert uuid.UUID(generated)


async def test_ready_reports_pending_migrations(database: Any, superuser_conn: Any, tmp_path: Path) -> None:
    svc = start_service(database, tmp_path)
    try:
        await superuser_conn.execute("DELETE FROM schema_migrations WHERE version = 1")
        status, body = http_get(svc.http_port, "/ready")
        assert status == 503
        assert json.loads(body)["checks"]["postgres"] == "migrations pending: 0001_schema.sql"
    finally:
        await superuser_conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (1, '0001_schema.sql', $1)",
            migrations.available()[0].checksum,
        )
        svc.stop()
    assert svc.proc.returncode == 0


async def test_cli_merchants_add_and_migrate(database: Any, superuser_conn: Any) -> None:
    env = {
        "CAMPAIGN_DB_DSN": database.app_dsn,
        "CAMPAIGN_DB_OWNER_DSN": database.owner_dsn,
        "CAMPAIGN_RELAY_DB_DSN": database.relay_dsn,
    }
    merchant = uuid.uuid4()
    first = cli("merchants", "add", str(merchant), env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"merchant {merchant} added"
    again = cli("merchants", "add", str(merchant), env=env)
    assert again.stdout.strip() == f"merchant {merchant} already exists"
    assert await superuser_conn.fetchval("SELECT count(*) FROM merchants WHERE id = $1", merchant) == 1
    migrate = cli("migrate", env=env)
    assert (migrate.returncode, migrate.stdout.strip()) == (0, "schema is up to date")
    bad = cli("merchants", "add", "not-a-uuid", env=env)
    assert bad.returncode == 2
    assert "not a UUID" in bad.stderr


def test_bad_configuration_names_the_variable(tmp_path: Path) -> None:
    for env, name in (
        ({"CAMPAIGN_GRPC_PORT": "seventy"}, "CAMPAIGN_GRPC_PORT"),
        ({"CAMPAIGN_HTTP_PORT": "70000"}, "CAMPAIGN_HTTP_PORT"),
        ({"CAMPAIGN_LOG_LEVEL": "loud"}, "CAMPAIGN_LOG_LEVEL"),
        ({"CAMPAIGN_DB_POOL_MIN": "50", "CAMPAIGN_DB_POOL_MAX": "5"}, "CAMPAIGN_DB_POOL_MIN"),
    ):
        result = cli("serve", env={**env, "CAMPAIGN_DATA_DIR": str(tmp_path)})
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1, result.stderr
        assert name in result.stderr
        assert "Traceback" not in result.stderr


def test_unreachable_database_is_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    result = cli(
        "migrate",
        env={"CAMPAIGN_DB_HOST": "127.0.0.1", "CAMPAIGN_DB_PORT": str(port), "CAMPAIGN_DB_CONNECT_TIMEOUT_S": "2"},
    )
    assert result.returncode == 1
    assert "cannot use the database" in result.stderr
    assert "Traceback" not in result.stderr


async def test_embedded_default_serves_with_no_database_configured(tmp_path: Path) -> None:
    """What `scripts/serve` and README do on a fresh machine: embedded PostgreSQL, migrated,
    serving, with authentication on: `dev-token` mints a token for the service's own key pair."""
    data = tmp_path / "data"
    merchant, other = uuid.uuid4(), uuid.uuid4()
    added = cli("merchants", "add", str(merchant), env={"CAMPAIGN_DATA_DIR": str(data)})
    assert added.returncode == 0, added.stderr
    minted = cli(
        "dev-token", "--merchant", str(merchant), "--subject", "newcomer", env={"CAMPAIGN_DATA_DIR": str(data)}
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    # the same command against another data dir signs with another key
    foreign = cli("dev-token", "--merchant", str(merchant), env={"CAMPAIGN_DATA_DIR": str(tmp_path / "other")})
    assert (data / "auth" / "dev-signing-key.pem").stat().st_mode & 0o777 == 0o600
    grpc_port, http_port = free_port(), free_port()
    env = {
        "CAMPAIGN_DATA_DIR": str(data),
        "CAMPAIGN_BIND_HOST": "127.0.0.1",
        "CAMPAIGN_GRPC_PORT": str(grpc_port),
        "CAMPAIGN_HTTP_PORT": str(http_port),
    }
    clean = without_service_settings()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaign_service", "serve"], env={**clean, **env}, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    svc = ServiceProcess(proc, grpc_port, http_port, tmp_path / "serve.log")
    try:
        wait_ready(svc)
        assert '"auth": "dev"' in svc.logs()
        async with auth_channel(svc.target, token) as channel:
            stub = campaign_grpc.CampaignServiceStub(channel)
            await stub.CreateVIPTier(
                pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=pb.VIPTier(tier_id="gold", name="Gold"))
            )
            got = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold"))
            assert got.name == "Gold"
            assert await rpc_code(stub.ListVIPTiers(pb.ListVIPTiersRequest(merchant_id=str(other)))) == (
                grpc.StatusCode.PERMISSION_DENIED
            )
        for channel in (grpc.aio.insecure_channel(svc.target), auth_channel(svc.target, foreign.stdout.strip())):
            async with channel:
                call = campaign_grpc.CampaignServiceStub(channel).ListVIPTiers(
                    pb.ListVIPTiersRequest(merchant_id=str(merchant))
                )
                assert await rpc_code(call) == grpc.StatusCode.UNAUTHENTICATED
        assert http_get(http_port, "/ready")[0] == 200
    finally:
        assert svc.stop() == 0
    # No Kafka configured: the event waits in the outbox, and the CLI shows it.
    listed = cli("outbox", "list", "--pending", env={"CAMPAIGN_DATA_DIR": str(data)})
    assert listed.returncode == 0, listed.stderr
    pending = [json.loads(line) for line in listed.stdout.splitlines() if '"payload"' in line]
    assert [(e["topic"], e["key"]) for e in pending] == [("vip_tier.updated", f"{merchant}:gold")]


async def rpc_code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_database_timeout_is_unavailable_not_internal(
    database: Any, superuser_conn: Any, new_merchant: Any, tmp_path: Path
) -> None:
    merchant = await new_merchant()
    svc = start_service(database, tmp_path, {"CAMPAIGN_DB_STATEMENT_TIMEOUT_MS": "300"})
    try:
        async with auth_channel(svc.target) as channel:
            stub = campaign_grpc.CampaignServiceStub(channel)
            async with superuser_conn.transaction():
                await superuser_conn.execute("LOCK TABLE vip_tiers IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "SELECT" not in (err.value.details() or "")
    finally:
        svc.stop()
