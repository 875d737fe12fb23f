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
from campaign_service.api.scheduled_mapping import change_to_proto, optional_time
from campaign_service.domain.errors import invalid
from campaign_service.domain.locales import check_requested
from campaign_service.domain.tier_changes import TierChangeJob
from campaign_service.domain.tiers import VIPTier
from campaign_service.service.errors import Unavailable
from campaign_service.service.progression_api import ProgressionApi
from campaign_service.service.reads import TierReads
from campaign_service.service.scheduled import ScheduledChanges
from campaign_service.service.tier_changes import TierChangePreviewer, TierEdit
from campaign_service.service.tiers import TierService


class CampaignServicer:
    """The methods of campaign.v1.CampaignService (api/server.py registers them by the proto's
    method names). GetVIPTier and ListVIPTiers answer with the serialized message, as cached."""

    def __init__(
        self,
        tiers: TierService,
        reads: TierReads,
        progression: ProgressionApi | None = None,
        previews: TierChangePreviewer | None = None,
        dated: ScheduledChanges | None = None,
    ) -> None:
        self._tiers = tiers
        self._reads = reads
        self._progression_api = progression
        self._previews = previews
        self._dated_changes = dated

    @property
    def _progression(self) -> ProgressionApi:
        if self._progression_api is None:  # a servicer built without storage (bench/interceptor_chain.py)
            raise Unavailable("tier progression is not configured")
        return self._progression_api

    @property
    def _dated(self) -> ScheduledChanges:
        if self._dated_changes is None:
            raise Unavailable("scheduled changes are not configured")
        return self._dated_changes

    async def GetVIPTier(
        self, request: pb.GetVIPTierRequest, context: grpc.aio.ServicerContext[pb.GetVIPTierRequest, pb.VIPTier]
    ) -> bytes:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        locale = check_requested(request.locale, "locale")
        return await self._reads.tier(merchant, request.tier_id, locale, optional_time(request, "as_of"))

    async def ListVIPTiers(
        self,
        request: pb.ListVIPTiersRequest,
        context: grpc.aio.ServicerContext[pb.ListVIPTiersRequest, pb.ListVIPTiersResponse],
    ) -> bytes:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        locale = check_requested(request.locale, "locale")
        return await self._reads.tiers(merchant, locale, optional_time(request, "as_of"))

    async def CreateVIPTier(
        self, request: pb.CreateVIPTierRequest, context: grpc.aio.ServicerContext[pb.CreateVIPTierRequest, pb.VIPTier]
    ) -> pb.VIPTier:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        if request.tier.merchant_id and request.tier.merchant_id != request.merchant_id:
            raise invalid("tier.merchant_id", "must be empty or equal to merchant_id")
        effective_at = optional_time(request, "effective_at")
        if effective_at is not None:
            change = await self._dated.schedule_create(
                merchant, request.tier.tier_id, spec_from_proto(request.tier), effective_at, request.apply_mode
            )
            assert change.tier is not None
            assert change.tier.spec is not None
            assert change.tier.new_id is not None
            at = change.effective_at
            msg = tier_to_proto(VIPTier(change.tier.new_id, merchant, change.target, change.tier.spec, 1, at, at), "")
            msg.scheduled_change_id = str(change.change_id)
            return msg
        tier = await self._tiers.create(
            merchant, request.tier.tier_id, spec_from_proto(request.tier), request.apply_mode
        )
        return tier_to_proto(tier, "")

    async def UpdateVIPTier(
        self,
        request: pb.UpdateVIPTierRequest,
        context: grpc.aio.ServicerContext[pb.UpdateVIPTierRequest, pb.UpdateVIPTierResponse],
    ) -> pb.UpdateVIPTierResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        effective_at = optional_time(request, "effective_at")
        if effective_at is not None:
            if request.expected_version:
                raise invalid("expected_version", "not with effective_at (the version then is not known yet)")
            change = await self._dated.schedule_update(
                merchant,
                request.tier_id,
                spec_from_proto(request.tier),
                list(request.update_mask.paths),
                effective_at,
                request.apply_mode,
            )
            return pb.UpdateVIPTierResponse(success=True, scheduled_change=change_to_proto(change))
        result = await self._tiers.update(
            merchant,
            request.tier_id,
            spec_from_proto(request.tier),
            list(request.update_mask.paths),
            request.expected_version,
            request.apply_mode,
        )
        return pb.UpdateVIPTierResponse(
            job_id=str(result.job_id) if result.job_id else "",
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
        effective_at = optional_time(request, "effective_at")
        if effective_at is not None:
            if request.expected_version:
                raise invalid("expected_version", "not with effective_at (the version then is not known yet)")
            change = await self._dated.schedule_delete(merchant, request.tier_id, effective_at, request.apply_mode)
            return pb.DeleteVIPTierResponse(success=True, scheduled_change=change_to_proto(change))
        job = await self._tiers.delete(merchant, request.tier_id, request.expected_version, request.apply_mode)
        return pb.DeleteVIPTierResponse(success=True, job_id=str(job) if job else "")

    async def GetTierChangeJob(
        self,
        request: pb.GetTierChangeJobRequest,
        context: grpc.aio.ServicerContext[pb.GetTierChangeJobRequest, pb.TierChangeJob],
    ) -> pb.TierChangeJob:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        job = await self._tiers.job(merchant, parse_uuid(request.job_id, "job_id"))
        return job_to_proto(job)

    async def PreviewTierChange(
        self,
        request: pb.PreviewTierChangeRequest,
        context: grpc.aio.ServicerContext[pb.PreviewTierChangeRequest, pb.PreviewTierChangeResponse],
    ) -> pb.PreviewTierChangeResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        if self._previews is None:
            raise Unavailable("previews need the database")
        matrix = await self._previews.preview(
            merchant,
            tiers=[TierEdit(t.tier_id, t.min_points, t.benefits.bonus_points) for t in request.tiers],
            delete_tier_ids=list(request.delete_tier_ids),
            programme=programme_from_proto(request.program) if request.program_mask.paths else None,
            programme_paths=list(request.program_mask.paths),
            mode=request.apply_mode,
            samples=request.samples_per_cell,
        )
        return pb.PreviewTierChangeResponse(
            customers=matrix.customers,
            events=matrix.moved(),
            cells=[
                pb.TierMoveCell(
                    from_tier_id=c.from_tier,
                    to_tier_id=c.to_tier,
                    direction=c.direction or "",
                    customers=c.customers,
                    bonus_points=c.bonus_points,
                    sample_customer_ids=[str(x) for x in c.samples],
                )
                for c in sorted(matrix.cells.values(), key=lambda c: (c.from_tier, c.to_tier))
            ],
        )

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
        if self._dated_changes is not None:
            as_of = optional_time(request, "as_of")
            return programme_to_proto(merchant, await self._dated_changes.programme_at(merchant, as_of))
        return programme_to_proto(merchant, await self._progression.get_programme(merchant))

    async def UpdateTierProgram(
        self,
        request: pb.UpdateTierProgramRequest,
        context: grpc.aio.ServicerContext[pb.UpdateTierProgramRequest, pb.UpdateTierProgramResponse],
    ) -> pb.UpdateTierProgramResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        if request.program.merchant_id and request.program.merchant_id != request.merchant_id:
            raise invalid("program.merchant_id", "must be empty or equal to merchant_id")
        effective_at = optional_time(request, "effective_at")
        if effective_at is not None:
            if request.expected_version:
                raise invalid("expected_version", "not with effective_at (the version then is not known yet)")
            change = await self._dated.schedule_programme(
                merchant,
                programme_from_proto(request.program),
                list(request.update_mask.paths),
                effective_at,
                request.apply_mode,
            )
            current = await self._progression.get_programme(merchant)
            return pb.UpdateTierProgramResponse(
                program=programme_to_proto(merchant, current), scheduled_change=change_to_proto(change)
            )
        result = await self._progression.update_programme(
            merchant,
            programme_from_proto(request.program),
            list(request.update_mask.paths),
            request.expected_version,
            mode=request.apply_mode,
        )
        return pb.UpdateTierProgramResponse(
            program=programme_to_proto(merchant, result.stored),
            updated_fields=result.changed,
            job_id=str(result.job_id) if result.job_id else "",
        )

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

    async def ListScheduledChanges(
        self,
        request: pb.ListScheduledChangesRequest,
        context: grpc.aio.ServicerContext[pb.ListScheduledChangesRequest, pb.ListScheduledChangesResponse],
    ) -> pb.ListScheduledChangesResponse:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        changes = await self._dated.list_changes(merchant, include_finished=request.include_finished)
        return pb.ListScheduledChangesResponse(changes=[change_to_proto(c) for c in changes])

    async def CancelScheduledChange(
        self,
        request: pb.CancelScheduledChangeRequest,
        context: grpc.aio.ServicerContext[pb.CancelScheduledChangeRequest, pb.ScheduledChange],
    ) -> pb.ScheduledChange:
        merchant = parse_uuid(request.merchant_id, "merchant_id")
        change_id = parse_uuid(request.change_id, "change_id")
        return change_to_proto(await self._dated.cancel(merchant, change_id))

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


def job_to_proto(job: TierChangeJob) -> pb.TierChangeJob:
    msg = pb.TierChangeJob(
        merchant_id=str(job.merchant_id), job_id=str(job.job_id), change_id=str(job.change_id), mode=job.mode,
        state=job.state, config_version=job.config_version, customers_total=job.customers_total,
        customers_done=job.customers_done, moved=job.moved, error=job.error or "",
    )  # fmt: skip
    msg.not_before.FromDatetime(job.not_before)
    msg.created_at.FromDatetime(job.created_at)
    if job.started_at:
        msg.started_at.FromDatetime(job.started_at)
    if job.finished_at:
        msg.finished_at.FromDatetime(job.finished_at)
    return msg
