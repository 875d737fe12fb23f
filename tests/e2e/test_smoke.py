"""The service process starts on the real database and answers over gRPC."""

from __future__ import annotations

import grpc
import pytest

from campaign_service.api.pb import campaign_pb2 as pb


async def test_unknown_tier_is_not_found(stub, new_merchant) -> None:
    merchant = await new_merchant()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_create_then_get(stub, new_merchant) -> None:
    merchant = await new_merchant()
    created = await stub.CreateVIPTier(
        pb.CreateVIPTierRequest(
            merchant_id=str(merchant),
            tier=pb.VIPTier(tier_id="gold", name="Gold", min_points=1000, translations={"ar": "ذهبي", "he": "זהב"}),
        )
    )
    assert created.version == 1
    got = await stub.GetVIPTier(pb.GetVIPTierRequest(merchant_id=str(merchant), tier_id="gold", locale="ar-SA"))
    assert (got.display_name, got.resolved_locale) == ("ذهبي", "ar")
