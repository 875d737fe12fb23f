"""Scheduled changes end to end through a real service process (its activator on, real clock):
UpdateVIPTier / DeleteVIPTier with effective_at, GetVIPTier as_of, ListScheduledChanges,
CancelScheduledChange, and bad input answered with the field named."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from campaign_service.api.pb import campaign_pb2 as pb
from tests.e2e.test_tier_api import create, gold, rpc_error, violations


def ts(at: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


async def test_a_scheduled_update_through_the_api(stub: Any, new_merchant: Any, superuser_conn: Any) -> None:
    merchant = await new_merchant()
    await create(stub, merchant, pb.VIPTier(tier_id="basic", name="Basic", min_points=0, is_default=True))
    await create(stub, merchant, gold())
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    resp = await stub.UpdateVIPTier(
        pb.UpdateVIPTierRequest(
            merchant_id=str(merchant),
            tier_id="gold",
            tier=pb.VIPTier(min_points=1500),
            update_mask=field_mask_pb2.FieldMask(paths=["min_points"]),
            effective_at=ts(at),
        )
    )
    change = resp.scheduled_change
    assert (change.kind, change.tier_id, change.state, list(change.update_mask.paths)) == (
        "tier_update", "gold", "pending", ["min_points"],
    )  # fmt: skip

    def get(as_of: datetime | None = None) -> Any:
        req = pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold")
        if as_of is not None:
            req.as_of.CopyFrom(ts(as_of))
        return stub.GetVIPTier(req)

    assert (await get()).min_points == 1000
    assert (await get(at - timedelta(milliseconds=1))).min_points == 1000
    assert (await get(at)).min_points == 1500
    listed = await stub.ListScheduledChanges(pb.ListScheduledChangesRequest(merchant_id=str(merchant)))
    assert [c.change_id for c in listed.changes] == [change.change_id]

    # Bad input: the field is named, nothing stored.
    past = await rpc_error(
        stub.DeleteVIPTier(
            pb.DeleteVIPTierRequest(
                merchant_id=str(merchant), tier_id="gold", effective_at=ts(datetime.now(UTC) - timedelta(seconds=1))
            )
        )
    )
    assert past.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(v.startswith("effective_at") for v in violations(past))
    collide = await rpc_error(
        stub.DeleteVIPTier(
            pb.DeleteVIPTierRequest(merchant_id=str(merchant), tier_id="gold", effective_at=ts(at + timedelta(hours=1)))
        )
    )
    assert collide.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "effective_at" in (collide.details() or "")
    unknown = await rpc_error(
        stub.DeleteVIPTier(
            pb.DeleteVIPTierRequest(merchant_id=str(merchant), tier_id="nope", effective_at=ts(at + timedelta(hours=1)))
        )
    )
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A past time answers the configuration kept for then: a minute ago the tier did not exist.
    in_past = await rpc_error(get(datetime.now(UTC) - timedelta(minutes=1)))
    assert in_past.code() == grpc.StatusCode.NOT_FOUND
    assert (
        await superuser_conn.fetchval("SELECT count(*) FROM tier_scheduled_changes WHERE merchant_id = $1", merchant)
        == 1
    )

    # A second change, cancelled: it never takes effect.
    delete = await stub.CreateVIPTier(
        pb.CreateVIPTierRequest(
            merchant_id=str(merchant),
            tier=pb.VIPTier(tier_id="platinum", name="Platinum", min_points=5000),
            effective_at=ts(at),
        )
    )
    assert delete.scheduled_change_id
    cancelled = await stub.CancelScheduledChange(
        pb.CancelScheduledChangeRequest(merchant_id=str(merchant), change_id=delete.scheduled_change_id)
    )
    assert cancelled.state == "cancelled"

    # At its time the reads flip at once; the activator (polling at most every 5 s) applies it.
    await asyncio.sleep((at - datetime.now(UTC)).total_seconds() + 0.05)
    assert (await get()).min_points == 1500
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        done = await stub.ListScheduledChanges(
            pb.ListScheduledChangesRequest(merchant_id=str(merchant), include_finished=True)
        )
        states = {c.change_id: c.state for c in done.changes}
        if states[change.change_id] == "applied" or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert states == {change.change_id: "applied", delete.scheduled_change_id: "cancelled"}
    stored = await superuser_conn.fetchval(
        "SELECT min_points FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 'gold'", merchant
    )
    assert stored == 1500
    assert not await superuser_conn.fetchval(
        "SELECT count(*) FROM vip_tiers WHERE merchant_id = $1 AND tier_id = 'platinum'", merchant
    )
    assert uuid.UUID(change.change_id)
