"""A database that cannot answer in time (a lock held elsewhere, statement_timeout) is
UNAVAILABLE, which callers may retry, not INTERNAL; the transaction rolled back."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.conftest import start_service
from tests.e2e.test_tier_api import gold
from tests.tokens import auth_channel


async def test_statement_timeout_is_unavailable(database: Any, tmp_path: Any, new_merchant: Any, superuser_conn: Any) -> None:
    svc = start_service(database, tmp_path, {"CAMPAIGN_DB_STATEMENT_TIMEOUT_MS": "200"})
    try:
        async with auth_channel(svc.target) as channel:
            stub = campaign_grpc.CampaignServiceStub(channel)
            merchant = await new_merchant()
            await stub.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=gold()))
            update = pb.UpdateVIPTierRequest(
                merchant_id=str(merchant),
                tier_id="gold",
                tier=pb.VIPTier(min_points=5),
                update_mask=field_mask_pb2.FieldMask(paths=["min_points"]),
            )
            async with superuser_conn.transaction():
                await superuser_conn.execute("SELECT 1 FROM vip_tiers WHERE merchant_id = $1 FOR UPDATE", merchant)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.UpdateVIPTier(update)
            assert (err.value.code(), err.value.details()) == (
                grpc.StatusCode.UNAVAILABLE,
                "the database is busy or unreachable; retry with backoff",
            )
            assert (await stub.UpdateVIPTier(update)).version == 2  # the retry works once the lock is gone
    finally:
        svc.stop()
