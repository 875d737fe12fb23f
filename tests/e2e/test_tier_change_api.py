"""PreviewTierChange, apply_mode and GetTierChangeJob end to end through a real service process
(issue 14)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.access import SCOPE_WRITE
from tests.e2e.test_progression_api import add_points, ladder, set_tier
from tests.e2e.test_tier_api import rpc_error, violations


async def test_preview_then_apply_full_then_the_job_reports_the_same_moves(
    stub: Any, stub_for: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await new_merchant()
    await ladder(stub, merchant)  # silver 100 < gold 1000 < platinum 5000
    a, b = uuid.uuid4(), uuid.uuid4()
    await set_tier(stub, merchant, a, "gold")  # 300 points: silver after gold rises to 2000
    await set_tier(stub, merchant, b, "silver")  # 3000 points: gold after the change
    await add_points(superuser_conn, merchant, a, date(2026, 1, 1), 300)
    await add_points(superuser_conn, merchant, b, date(2026, 1, 1), 3000)
    gold = pb.VIPTier(tier_id="gold", min_points=2000)
    preview = await stub.PreviewTierChange(
        pb.PreviewTierChangeRequest(merchant_id=str(merchant), tiers=[gold], apply_mode="full", samples_per_cell=5)
    )
    cells = {(c.from_tier_id, c.to_tier_id): (c.direction, c.customers, list(c.sample_customer_ids))
             for c in preview.cells}  # fmt: skip
    assert cells == {("gold", "silver"): ("down", 1, [str(a)]), ("silver", "gold"): ("up", 1, [str(b)])}
    assert (preview.customers, preview.events) == (2, 2)
    # nothing changed by the preview
    assert await superuser_conn.fetchval("SELECT count(*) FROM tier_change_jobs WHERE merchant_id = $1", merchant) == 0
    updated = await stub.UpdateVIPTier(
        pb.UpdateVIPTierRequest(
            merchant_id=str(merchant), tier_id="gold", tier=gold,
            update_mask=field_mask_pb2.FieldMask(paths=["min_points"]), apply_mode="full",
        )
    )  # fmt: skip
    assert updated.job_id
    job = None
    for _ in range(200):
        job = await stub.GetTierChangeJob(pb.GetTierChangeJobRequest(merchant_id=str(merchant), job_id=updated.job_id))
        if job.state == "done":
            break
        await asyncio.sleep(0.1)
    assert job is not None
    assert (job.state, job.mode, job.customers_done, job.moved) == ("done", "full", 2, 2)
    writer = stub_for(merchant, scopes=[SCOPE_WRITE])  # preview and job are admin
    for call in (
        writer.PreviewTierChange(pb.PreviewTierChangeRequest(merchant_id=str(merchant))),
        writer.GetTierChangeJob(pb.GetTierChangeJobRequest(merchant_id=str(merchant), job_id=updated.job_id)),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED


async def test_bad_preview_input_names_the_field(stub: Any, new_merchant: Any) -> None:
    merchant = await new_merchant()
    await ladder(stub, merchant)
    for request, field in (
        (pb.PreviewTierChangeRequest(merchant_id=str(merchant), apply_mode="sometimes"), "apply_mode"),
        (pb.PreviewTierChangeRequest(merchant_id=str(merchant), delete_tier_ids=["nope"]), "delete_tier_ids[0]"),
    ):
        error = await rpc_error(stub.PreviewTierChange(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violations(error)
