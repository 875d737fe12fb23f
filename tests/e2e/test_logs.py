"""Logs of a real service process: one JSON object per line with the request's fields."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import ServiceProcess, free_port, wait_ready
from tests.tokens import auth_channel

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CORE = {"timestamp", "level", "message", "correlation_id", "merchant_id", "tier_id", "event_type"}


def log_lines(service: ServiceProcess) -> list[dict[str, Any]]:
    lines = [line for line in service.logs().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        obj = json.loads(line)  # every line is one JSON object
        assert isinstance(obj, dict), line
        parsed.append(obj)
    return parsed


async def lines_of(service: ServiceProcess, correlation_id: str, count: int) -> list[dict[str, Any]]:
    """The lines of one request, waiting (5 s at most) for `count` of them: an aborted RPC's status
    reaches the client before the server's interceptors have logged it."""
    lines: list[dict[str, Any]] = []
    for _ in range(100):
        lines = [line for line in log_lines(service) if line["correlation_id"] == correlation_id]
        if len(lines) >= count:
            break
        await asyncio.sleep(0.05)
    return lines


async def test_update_logs_merchant_tier_event_type_and_the_callers_ids(
    service: ServiceProcess, stub: Any, new_merchant: Any
) -> None:
    merchant = str(await new_merchant())
    cid = f"test-{uuid.uuid4().hex[:12]}"
    metadata = (("x-correlation-id", cid), ("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01"))
    await stub.CreateVIPTier(
        pb.CreateVIPTierRequest(merchant_id=merchant, tier=pb.VIPTier(tier_id="gold", name="Gold", min_points=10))
    )
    call = stub.UpdateVIPTier(
        pb.UpdateVIPTierRequest(
            merchant_id=merchant,
            tier_id="gold",
            tier=pb.VIPTier(min_points=20),
            update_mask=field_mask_pb2.FieldMask(paths=["min_points"]),
        ),
        metadata=metadata,
    )
    await call
    assert ("x-correlation-id", cid) in tuple(await call.trailing_metadata())

    mine = await lines_of(service, cid, 2)
    committed = [line for line in mine if line["message"] == "tier change committed"]
    assert len(committed) == 1
    line = committed[0]
    assert (line["merchant_id"], line["tier_id"], line["event_type"]) == (merchant, "gold", "vip_tier.updated")
    assert line["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])
    assert "trace_id" not in line, "tracing is off: no span, no trace ids (tests/e2e/test_tracing.py has them)"
    handled = [line for line in mine if line["message"] == "rpc handled"]
    assert [(h["grpc_method"], h["grpc_code"], h["merchant_id"], h["tier_id"]) for h in handled] == [
        ("UpdateVIPTier", "OK", merchant, "gold")
    ]


async def test_failed_lookup_is_logged_with_a_generated_correlation_id(
    service: ServiceProcess, new_merchant: Any
) -> None:
    merchant = str(await new_merchant())
    async with auth_channel(service.target) as channel:
        call = campaign_grpc.CampaignServiceStub(channel).GetVIPTier(
            pb.GetVIPTierRequest(merchant_id=merchant, tier_id="nope")
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        echoed = cast(str, dict(await call.trailing_metadata())["x-correlation-id"])  # not a -bin key: text
    assert uuid.UUID(echoed)
    lines = await lines_of(service, echoed, 1)
    assert [(x["message"], x["grpc_code"], x["merchant_id"], x["tier_id"]) for x in lines] == [
        ("rpc handled", "NOT_FOUND", merchant, "nope")
    ]


# Runs after the tests above, so the log holds requests, errors and start-up lines.
async def test_every_line_is_json_with_the_core_keys(service: ServiceProcess) -> None:
    with_missing = [line for line in log_lines(service) if not line.keys() >= CORE]
    assert not with_missing, with_missing[:3]


@pytest.mark.parametrize("auth_host", [None, "127.0.0.1:9"], ids=["default", "auth-service-channel"])
def test_an_embedded_default_start_and_stop_writes_nothing_but_json(embedded_dir: Path, auth_host: str | None) -> None:
    """The whole output of `campaign-service serve` with no database configured (embedded
    PostgreSQL started, served, SIGTERM, embedded PostgreSQL stopped), stdout and stderr apart:
    every line parses as a JSON object. gRPC core printed a plain-text line when pgserver forked
    while its threads were busy; with an Auth Service channel they are from before initdb until
    after the embedded server stops (AUTH_HOST needs no server here: no RPC is made)."""
    grpc_port, http_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGN_")},
        "CAMPAIGN_DATA_DIR": str(embedded_dir / "data"),
        "CAMPAIGN_BIND_HOST": "127.0.0.1",
        "CAMPAIGN_GRPC_PORT": str(grpc_port),
        "CAMPAIGN_HTTP_PORT": str(http_port),
        "XDG_RUNTIME_DIR": str(embedded_dir),
        **({"AUTH_HOST": auth_host} if auth_host else {}),
    }
    for name in ("KAFKA_BROKER", "REDIS_HOST", "GRPC_ENABLE_FORK_SUPPORT", "GRPC_VERBOSITY"):
        env.pop(name, None)
    if not auth_host:
        env.pop("AUTH_HOST", None)
    out, err = embedded_dir / "stdout", embedded_dir / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([_command(), "serve"], env=env, stdout=stdout, stderr=stderr)
    service = ServiceProcess(proc, grpc_port, http_port, out)
    try:
        wait_ready(service)
    finally:
        code = service.stop()
    assert code == 0
    lines = out.read_text().splitlines() + err.read_text().splitlines()
    not_json = []
    for line in lines:
        try:
            assert isinstance(json.loads(line), dict)
        except (ValueError, AssertionError):
            not_json.append(line)
    assert not not_json, not_json
    messages = [json.loads(line)["message"] for line in lines]
    assert messages[-1] == "stopped"
    assert not (embedded_dir / "data" / "pg" / "postmaster.pid").exists()  # the embedded server stopped too


def _command() -> str:
    """The installed `campaign-service` command, next to this interpreter."""
    return str(Path(sys.executable).with_name("campaign-service"))
