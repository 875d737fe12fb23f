"""A no-op grpc.aio CampaignService: the baseline the real service is compared with.

Every RPC returns a constant, pre-built response; no interceptors, no I/O. Run:
    python -m bench.noop_server PORT
"""

from __future__ import annotations

import sys

import grpc
import uvloop

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb

TIER = pb.VIPTier(
    id="00000000-0000-0000-0000-000000000001",
    merchant_id="00000000-0000-0000-0000-000000000002",
    tier_id="gold",
    name="Gold",
    locale="en",
    min_points=1000,
    discount_percentage=10,
    translations={"ar": "ذهبي", "he": "זהב"},
    version=1,
    resolved_locale="ar",
    display_name="ذهبي",
)


class NoopServicer(campaign_grpc.CampaignServiceServicer):
    async def GetVIPTier(self, request: pb.GetVIPTierRequest, context: object) -> pb.VIPTier:
        return TIER

    async def ListVIPTiers(self, request: pb.ListVIPTiersRequest, context: object) -> pb.ListVIPTiersResponse:
        return pb.ListVIPTiersResponse(tiers=[TIER] * 10)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    # The generated base marks every method abstract; those not overridden answer UNIMPLEMENTED.
    campaign_grpc.add_CampaignServiceServicer_to_server(NoopServicer(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
