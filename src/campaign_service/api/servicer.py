"""campaign.v1.CampaignService: turns requests into use-case calls and results into messages.

Validation errors, missing rows and conflicts are raised as domain errors; the error
interceptor turns them into status codes.
"""

from __future__ import annotations

import grpc

from campaign_service.api.mapping import parse_uuid, spec_from_proto, tier_to_proto
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.errors import invalid
from campaign_service.domain.locales import check_requested
from campaign_service.service.reads import TierReads
from campaign_service.service.tiers import TierService


class CampaignServicer:
    """The methods of campaign.v1.CampaignService (api/server.py registers them by the proto's
    method names). GetVIPTier and ListVIPTiers answer with the serialized message, as cached."""

    def __init__(self, tiers: TierService, reads: TierReads) -> None:
        self._tiers = tiers
        self._reads = reads

    async def GetVIPTier(
        self, request: pb.GetVIPTierRequest, context: grpc.aio.ServicerContext[pb.GetVIPTierRequest, pb.VIPTier]
    ) -> bytes:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        locale = check_requested(request.locale, "locale")
        return await self._reads.tier(merchant, request.tier_id, locale)

    async def ListVIPTiers(
        self,
        request: pb.ListVIPTiersRequest,
        context: grpc.aio.ServicerContext[pb.ListVIPTiersRequest, pb.ListVIPTiersResponse],
    ) -> bytes:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        locale = check_requested(request.locale, "locale")
        return await self._reads.tiers(merchant, locale)

    async def CreateVIPTier(
        self, request: pb.CreateVIPTierRequest, context: grpc.aio.ServicerContext[pb.CreateVIPTierRequest, pb.VIPTier]
    ) -> pb.VIPTier:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        if request.tier.merchant_id and request.tier.merchant_id != request.merchant_id:
            raise invalid("tier.merchant_id", "must be empty or equal to merchant_id")
        tier = await self._tiers.create(merchant, request.tier.tier_id, spec_from_proto(request.tier))
        return tier_to_proto(tier, "")

    async def UpdateVIPTier(
        self,
        request: pb.UpdateVIPTierRequest,
        context: grpc.aio.ServicerContext[pb.UpdateVIPTierRequest, pb.UpdateVIPTierResponse],
    ) -> pb.UpdateVIPTierResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        result = await self._tiers.update(
            merchant,
            request.tier_id,
            spec_from_proto(request.tier),
            list(request.update_mask.paths),
            request.expected_version,
        )
        return pb.UpdateVIPTierResponse(
            success=bool(result.updated_fields),
            version=result.tier.version,
            tier=tier_to_proto(result.tier, ""),
            updated_fields=result.updated_fields,
        )

    async def DeleteVIPTier(
        self,
        request: pb.DeleteVIPTierRequest,
        context: grpc.aio.ServicerContext[pb.DeleteVIPTierRequest, pb.DeleteVIPTierResponse],
    ) -> pb.DeleteVIPTierResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        await self._tiers.delete(merchant, request.tier_id, request.expected_version)
        return pb.DeleteVIPTierResponse(success=True)

    async def GetCustomerTier(
        self,
        request: pb.GetCustomerTierRequest,
        context: grpc.aio.ServicerContext[pb.GetCustomerTierRequest, pb.CustomerTier],
    ) -> pb.CustomerTier:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        customer = parse_uuid(request.customer_id, "customer_id")
        locale = check_requested(request.locale, "locale")
        assignment, tier = await self._tiers.customer_tier(merchant, customer)
        msg = pb.CustomerTier(
            merchant_id=str(merchant),
            customer_id=str(customer),
            tier=tier_to_proto(tier, locale),
            source=assignment.source,
            cause_event_id=str(assignment.cause_event_id) if assignment.cause_event_id else "",
        )
        msg.assigned_at.FromDatetime(assignment.assigned_at)
        return msg

    async def EvaluateTier(
        self, request: pb.EvaluateTierRequest, context: grpc.aio.ServicerContext[pb.EvaluateTierRequest, pb.VIPTier]
    ) -> pb.VIPTier:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        locale = check_requested(request.locale, "locale")
        tier = await self._tiers.evaluate(merchant, request.points)
        return tier_to_proto(tier, locale)
