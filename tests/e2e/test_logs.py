"""Logs of a real service process: one JSON object per line with the request's fields."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import ServiceProcess
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
