"""Handler of `customer.created`: give the new customer the merchant's default tier, exactly once.

Events come in batches. The events of one merchant in a batch are applied in ONE transaction
(RLS scopes each transaction to its merchant), set-based: the dedupe rows in processed_events,
then the assignments and the `vip_tier.assigned` outbox rows of the events recorded for the first
time only. A redelivered event therefore changes nothing. Merchants of a batch run concurrently
(bounded). The optional fast path (Redis `processed:{merchant_id}:{event_id}`) only skips work
the database would refuse anyway.

What can never succeed is Rejected (dead-lettered by the transport):
  invalid_payload   required ids missing or not UUIDs
  unknown_merchant  the merchant is not provisioned (replay from the DLQ once it is)
A merchant without a default tier is a no-op, not an error: SPEC says "assign the default tier
if the merchant has one". The event is still recorded as processed.

When a merchant's transaction fails for another reason than the database being unavailable, its
events are handled again one by one, so that a bad event fails alone and its batch-mates go on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog

from campaign_service import metrics, topics
from campaign_service.domain import events
from campaign_service.domain.errors import NotFound
from campaign_service.domain.ids import is_correlation_id
from campaign_service.events.key_order import one_by_one
from campaign_service.events.ports import InboundEvent, Outcome, ProcessedEvents, Rejected
from campaign_service.service.errors import Unavailable
from campaign_service.service.ports import CustomerAssignment
from campaign_service.service.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)

SOURCE = "customer.created"


@dataclass(frozen=True)
class CustomerCreated:
    event_id: UUID
    merchant_id: UUID
    customer_id: UUID
    correlation_id: str
    traceparent: str | None = None


def _uuid(payload: Mapping[str, Any], name: str) -> UUID:
    value = payload.get(name)
    if value is None:
        raise Rejected("invalid_payload", f"{name} is missing")
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise Rejected("invalid_payload", f"{name} is not a UUID") from None


def parse(event: InboundEvent) -> CustomerCreated:
    payload = event.payload
    correlation = event.headers.get("correlation_id") or payload.get("correlation_id")
    return CustomerCreated(
        event_id=_uuid(payload, "event_id"),
        merchant_id=_uuid(payload, "merchant_id"),
        customer_id=_uuid(payload, "customer_id"),
        # The gRPC rule: e.g. a NUL (which jsonb refuses) would make the event fail for ever.
        correlation_id=correlation if is_correlation_id(correlation) else str(uuid.uuid4()),
        traceparent=event.traceparent,
    )


@dataclass
class _Applied:
    """One merchant's part of a batch: an outcome per event, and what this level counts."""

    outcomes: list[Outcome]
    tally: Counter[str] = field(default_factory=Counter)  # outcome label -> events
    committed: list[CustomerCreated] = field(default_factory=list)  # for the fast path


class CustomerCreatedHandler:
    def __init__(self, uow: UnitOfWork, processed: ProcessedEvents | None = None, *, concurrency: int = 8) -> None:
        self._uow = uow
        self._processed = processed
        # Merchant transactions of a batch at once; each holds a database connection.
        self._slots = asyncio.Semaphore(concurrency)
        self._one_by_one = one_by_one(self, concurrency=1)

    async def __call__(self, event: InboundEvent) -> None:
        """Handles one event; raises Rejected (dead-letter it) or the reason to try it again."""
        [outcome] = await self.batch([event])
        if outcome is not None:
            raise outcome

    async def batch(self, batch: Sequence[InboundEvent]) -> list[Outcome]:
        """The BatchHandler: one Outcome per event, in order."""
        started = time.perf_counter()
        outcomes: list[Outcome] = [None] * len(batch)
        tally: Counter[str] = Counter()
        parsed: dict[int, CustomerCreated] = {}
        for i, event in enumerate(batch):
            try:
                parsed[i] = parse(event)
            except Rejected as exc:
                outcomes[i] = exc
        known: set[UUID] = set()
        if self._processed is not None and parsed:
            known = await self._processed.seen([(c.merchant_id, c.event_id) for c in parsed.values()])
        by_merchant: dict[UUID, list[int]] = {}
        for i, created in parsed.items():
            if created.event_id in known:
                tally["duplicate"] += 1
            else:
                by_merchant.setdefault(created.merchant_id, []).append(i)
        groups = list(by_merchant.items())
        applied = await asyncio.gather(
            *(self._merchant(merchant, [batch[i] for i in ix], [parsed[i] for i in ix]) for merchant, ix in groups)
        )
        committed: list[CustomerCreated] = []
        for (_, ix), result in zip(groups, applied, strict=True):
            for i, outcome in zip(ix, result.outcomes, strict=True):
                outcomes[i] = outcome
            tally.update(result.tally)
            committed += result.committed
        if self._processed is not None and committed:
            await self._processed.remember([(c.merchant_id, c.event_id) for c in committed])
        for outcome_label, n in tally.items():
            metrics.EVENTS_CONSUMED.labels(SOURCE, outcome_label).inc(n)
        if tally["assigned"]:
            metrics.ASSIGNMENT_EVENTS.inc(tally["assigned"])
        log.info(
            "customer.created batch handled",
            event_type=SOURCE,
            events=len(batch),
            merchants=len(groups),
            outcomes=dict(tally),
            rejected=sum(isinstance(o, Rejected) for o in outcomes),
            failed=sum(o is not None and not isinstance(o, Rejected) for o in outcomes),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return outcomes

    async def _merchant(self, merchant: UUID, batch: list[InboundEvent], created: list[CustomerCreated]) -> _Applied:
        try:
            async with self._slots:
                labels = await self._apply(merchant, created)
        except (Rejected, Unavailable) as exc:
            # An unknown merchant rejects all its events; an unavailable database fails them all.
            return _Applied([exc] * len(created))
        except Exception as exc:  # maybe one bad event: each alone below, so it fails alone
            if len(created) == 1:
                return _Applied([exc])
            log.warning(
                "merchant batch failed; handling its events one by one",
                event_type=SOURCE,
                merchant_id=str(merchant),
                events=len(created),
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            return _Applied(await self._one_by_one(batch))  # each call counts and remembers itself
        return _Applied([None] * len(created), Counter(labels), created)

    async def _apply(self, merchant: UUID, batch: Sequence[CustomerCreated]) -> list[str]:
        """Applies one merchant's events in one transaction; the outcome label of each event."""
        labels = ["duplicate"] * len(batch)
        # The first copy of an event in the batch counts; the database answers for earlier batches.
        first: dict[UUID, int] = {}
        for i, c in enumerate(batch):
            first.setdefault(c.event_id, i)
        async with self._uow(merchant) as uow:
            try:
                fresh = await uow.inbox.mark_processed(list(first), topics.CUSTOMER_CREATED)
            except NotFound:
                raise Rejected("unknown_merchant", f"merchant {merchant} is not provisioned") from None
            new = [i for event_id, i in first.items() if event_id in fresh]
            if not new:
                return labels
            tier = await uow.tiers.default()
            if tier is None:
                for i in new:
                    labels[i] = "no_default_tier"
                return labels
            # A customer's first event assigns; a later one finds the customer assigned, as it
            # would in a later batch.
            by_customer: dict[UUID, int] = {}
            for i in new:
                if batch[i].customer_id in by_customer:
                    labels[i] = "already_assigned"
                else:
                    by_customer[batch[i].customer_id] = i
            # Millisecond precision: what the database stores is what the event says.
            now = datetime.now(UTC)
            assigned_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
            assigned = await uow.customers.assign(
                [
                    CustomerAssignment(merchant, customer, tier.tier_id, assigned_at, SOURCE, batch[i].event_id)
                    for customer, i in by_customer.items()
                ]
            )
            for customer, i in by_customer.items():
                if customer not in assigned:
                    labels[i] = "already_assigned"
                    continue
                labels[i] = "assigned"
                uow.emit(
                    events.tier_assigned(
                        event_id=uuid.uuid4(),
                        merchant_id=merchant,
                        customer_id=customer,
                        tier_id=tier.tier_id,
                        assigned_at=assigned_at,
                        correlation_id=batch[i].correlation_id,
                        cause_event_id=batch[i].event_id,
                        traceparent=batch[i].traceparent,
                    )
                )
        return labels
