"""campaign.v1.CampaignService: turns requests into use-case calls and results into messages.

Validation errors, missing rows and conflicts are raised as domain errors; the error
interceptor turns them into status codes.
"""

from __future__ import annotations

from datetime import UTC

import grpc

from campaign_service.api.mapping import (
    locales_to_proto,
    parse_uuid,
    report_to_proto,
    spec_from_proto,
    tier_to_proto,
)
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.api.progression_mapping import (
    history_to_proto,
    programme_from_proto,
    programme_to_proto,
    status_to_proto,
)
from campaign_service.domain.errors import invalid
from campaign_service.domain.locales import check_requested
from campaign_service.service.errors import Unavailable
from campaign_service.service.progression_api import ProgressionApi
from campaign_service.service.reads import TierReads
from campaign_service.service.tiers import TierService


class CampaignServicer:
    """The methods of campaign.v1.CampaignService (api/server.py registers them by the proto's
    method names). GetVIPTier and ListVIPTiers answer with the serialized message, as cached."""

    def __init__(self, tiers: TierService, reads: TierReads, progression: ProgressionApi | None = None) -> None:
        self._tiers = tiers
        self._reads = reads
        self._progression_api = progression

    @property
    def _progression(self) -> ProgressionApi:
        if self._progression_api is None:  # a servicer built without storage (bench/interceptor_chain.py)
            raise Unavailable("tier progression is not configured")
        return self._progression_api

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

    async def GetTierProgram(
        self,
        request: pb.GetTierProgramRequest,
        context: grpc.aio.ServicerContext[pb.GetTierProgramRequest, pb.TierProgram],
    ) -> pb.TierProgram:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        return programme_to_proto(merchant, await self._progression.get_programme(merchant))

    async def UpdateTierProgram(
        self,
        request: pb.UpdateTierProgramRequest,
        context: grpc.aio.ServicerContext[pb.UpdateTierProgramRequest, pb.UpdateTierProgramResponse],
    ) -> pb.UpdateTierProgramResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        if request.program.merchant_id and request.program.merchant_id != request.merchant_id:
            raise invalid("program.merchant_id", "must be empty or equal to merchant_id")
        stored, changed = await self._progression.update_programme(
            merchant, programme_from_proto(request.program), list(request.update_mask.paths), request.expected_version
        )
        return pb.UpdateTierProgramResponse(program=programme_to_proto(merchant, stored), updated_fields=changed)

    async def GetCustomerTierStatus(
        self,
        request: pb.GetCustomerTierStatusRequest,
        context: grpc.aio.ServicerContext[pb.GetCustomerTierStatusRequest, pb.CustomerTierStatus],
    ) -> pb.CustomerTierStatus:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        customer = parse_uuid(request.customer_id, "customer_id")
        locale = check_requested(request.locale, "locale")
        status = await self._progression.status(merchant, customer)
        return status_to_proto(merchant, customer, status, locale)

    async def ListCustomerTierHistory(
        self,
        request: pb.ListCustomerTierHistoryRequest,
        context: grpc.aio.ServicerContext[pb.ListCustomerTierHistoryRequest, pb.ListCustomerTierHistoryResponse],
    ) -> pb.ListCustomerTierHistoryResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        customer = parse_uuid(request.customer_id, "customer_id")
        page = await self._progression.history(merchant, customer, request.page_size, request.page_token)
        return history_to_proto(page)

    async def SetCustomerTier(
        self,
        request: pb.SetCustomerTierRequest,
        context: grpc.aio.ServicerContext[pb.SetCustomerTierRequest, pb.SetCustomerTierResponse],
    ) -> pb.SetCustomerTierResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        customer = parse_uuid(request.customer_id, "customer_id")
        until = request.floor_until.ToDatetime(tzinfo=UTC) if request.HasField("floor_until") else None
        result = await self._progression.assign(
            merchant, customer, request.tier_id, request.reason, as_floor=request.as_floor, floor_until=until
        )
        return pb.SetCustomerTierResponse(
            changed=result.changed, previous_tier_id=result.previous_tier_id or "", tier_id=result.tier_id
        )

    async def GetMerchantLocales(
        self,
        request: pb.GetMerchantLocalesRequest,
        context: grpc.aio.ServicerContext[pb.GetMerchantLocalesRequest, pb.MerchantLocales],
    ) -> pb.MerchantLocales:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        return locales_to_proto(merchant, await self._tiers.locales(merchant))

    async def UpdateMerchantLocales(
        self,
        request: pb.UpdateMerchantLocalesRequest,
        context: grpc.aio.ServicerContext[pb.UpdateMerchantLocalesRequest, pb.UpdateMerchantLocalesResponse],
    ) -> pb.UpdateMerchantLocalesResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        stored, changed = await self._tiers.update_locales(merchant, list(request.locales), request.expected_version)
        return pb.UpdateMerchantLocalesResponse(locales=locales_to_proto(merchant, stored), changed=changed)

    async def GetTranslationReport(
        self,
        request: pb.GetTranslationReportRequest,
        context: grpc.aio.ServicerContext[pb.GetTranslationReportRequest, pb.TranslationReport],
    ) -> pb.TranslationReport:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        stored, entries = await self._tiers.translation_report(merchant)
        return report_to_proto(merchant, stored, entries)
