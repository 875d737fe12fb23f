"""The customer.created handler on the in-memory unit of work: dedupe, first event wins, the
one-by-one fallback, rejections. The same against PostgreSQL and Kafka: tests/integration."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest

from campaign_service import topics
from campaign_service.domain.tiers import TierSpec
from campaign_service.events.customer_created import SOURCE, CustomerCreatedHandler, parse
from campaign_service.events.ports import Deferred, InboundEvent, Rejected
from campaign_service.service.errors import Unavailable
from campaign_service.service.tiers import TierService
from tests.fakes import FakeUnitOfWork


def created(
    merchant: UUID | str | None,
    customer: UUID | str | None,
    event_id: UUID | str | None,
    key: str | None = None,
    **extra: Any,
) -> InboundEvent:
    payload = {"event_id": event_id, "customer_id": customer, "merchant_id": merchant, "created_at": 0, **extra}
    return InboundEvent(topics.CUSTOMER_CREATED, key if key is not None else str(merchant), payload, {})


async def with_default(db: FakeUnitOfWork, tier_id: str = "member") -> UUID:
    merchant = db.provision()
    await TierService(db).create(merchant, tier_id, TierSpec(name="Member", is_default=True))
    db.outbox.clear()
    return merchant


def announced(db: FakeUnitOfWork) -> list[tuple[str, str]]:
    """(customer_id, cause_event_id) of each vip_tier.assigned event committed, in outbox order."""
    return [(m.payload["customer_id"], m.payload["cause_event_id"]) for m in db.events(topics.VIP_TIER_ASSIGNED)]


class Remembered:
    """The fast path (ProcessedEvents) in memory."""

    def __init__(self) -> None:
        self.known: set[tuple[UUID, UUID]] = set()
        self.lookups = 0

    async def seen(self, events: Sequence[tuple[UUID, UUID]]) -> set[UUID]:
        self.lookups += 1
        return {event_id for merchant, event_id in events if (merchant, event_id) in self.known}

    async def remember(self, events: Sequence[tuple[UUID, UUID]]) -> None:
        self.known.update(events)


@pytest.fixture
def db() -> FakeUnitOfWork:
    return FakeUnitOfWork()


async def test_a_new_customer_gets_the_default_tier_and_it_is_announced(db: FakeUnitOfWork) -> None:
    merchant = await with_default(db)
    customer, event_id = uuid.uuid4(), uuid.uuid4()
    event = created(merchant, customer, event_id)
    event = InboundEvent(event.source, event.key, event.payload, {"correlation_id": "corr-7"})
    await CustomerCreatedHandler(db)(event)
    assignment = db.customers(merchant)[customer]
    assert (assignment.tier_id, assignment.source, assignment.cause_event_id) == ("member", SOURCE, event_id)
    assert assignment.assigned_at.microsecond % 1000 == 0  # what the database stores
    [message] = db.outbox
    assert message.topic == topics.VIP_TIER_ASSIGNED
    assert message.key == f"{merchant}:{customer}"
    assert message.payload["tier_id"] == "member"
    assert message.payload["assigned_at"] == int(assignment.assigned_at.timestamp() * 1000)
    assert message.payload["correlation_id"] == "corr-7"
    assert message.headers == {"correlation_id": "corr-7", "cause_event_id": str(event_id)}
    assert db.processed == {event_id: topics.CUSTOMER_CREATED}


async def test_copies_within_and_across_batches_give_one_assignment_each(db: FakeUnitOfWork) -> None:
    merchant = await with_default(db)
    c1, c2, c3 = (uuid.uuid4() for _ in range(3))
    e1, e2, e3 = (uuid.uuid4() for _ in range(3))
    handler = CustomerCreatedHandler(db)  # no fast path: the unit of work alone dedupes
    first = [created(merchant, c1, e1), created(merchant, c2, e2), created(merchant, c1, e1)]
    assert await handler.batch(first) == [None] * 3
    again = [created(merchant, c2, e2), created(merchant, c3, e3), created(merchant, c1, e1)]
    assert await handler.batch(again) == [None] * 3
    assert {c: a.cause_event_id for c, a in db.customers(merchant).items()} == {c1: e1, c2: e2, c3: e3}
    assert announced(db) == [(str(c1), str(e1)), (str(c2), str(e2)), (str(c3), str(e3))]
    assert set(db.processed) == {e1, e2, e3}


async def test_the_first_event_of_a_customer_wins(db: FakeUnitOfWork) -> None:
    merchant = await with_default(db)
    customer = uuid.uuid4()
    e1, e2, e3 = (uuid.uuid4() for _ in range(3))
    handler = CustomerCreatedHandler(db)
    assert await handler.batch([created(merchant, customer, e1), created(merchant, customer, e2)]) == [None, None]
    assert await handler.batch([created(merchant, customer, e3)]) == [None]  # already assigned
    assert db.customers(merchant)[customer].cause_event_id == e1
    assert announced(db) == [(str(customer), str(e1))]
    assert set(db.processed) == {e1, e2, e3}  # the later ones are done with, not retried


async def test_a_merchant_without_a_default_tier_records_the_event_only(db: FakeUnitOfWork) -> None:
    merchant = db.provision()
    await TierService(db).create(merchant, "gold", TierSpec(name="Gold", min_points=10))
    db.outbox.clear()
    event_id = uuid.uuid4()
    assert await CustomerCreatedHandler(db).batch([created(merchant, uuid.uuid4(), event_id)]) == [None]
    assert db.customers(merchant) == {}
    assert db.outbox == []
    assert set(db.processed) == {event_id}


async def test_unknown_merchant_and_bad_payloads_are_rejected(db: FakeUnitOfWork) -> None:
    known = await with_default(db)
    unknown = uuid.uuid4()
    batch = [
        created(unknown, uuid.uuid4(), uuid.uuid4()),
        created(known, uuid.uuid4(), None),
        created(known, "not-a-uuid", uuid.uuid4()),
        created(unknown, uuid.uuid4(), uuid.uuid4()),
        created(known, uuid.uuid4(), uuid.uuid4()),
    ]
    outcomes = await CustomerCreatedHandler(db).batch(batch)
    reasons = [o.reason if isinstance(o, Rejected) else o for o in outcomes]
    assert reasons == ["unknown_merchant", "invalid_payload", "invalid_payload", "unknown_merchant", None]
    assert "event_id is missing" in str(outcomes[1])
    assert "customer_id is not a UUID" in str(outcomes[2])
    assert unknown not in db.rows
    assert len(db.customers(known)) == 1
    with pytest.raises(Rejected, match="unknown_merchant"):
        await CustomerCreatedHandler(db)(created(unknown, uuid.uuid4(), uuid.uuid4()))


async def test_a_failing_merchant_batch_is_retried_one_by_one(db: FakeUnitOfWork) -> None:
    merchant, other = await with_default(db), await with_default(db)
    good1, bad, good2, after_bad = (uuid.uuid4() for _ in range(4))
    db.poison_customer(bad)
    batch = [
        created(merchant, good1, uuid.uuid4(), key="a"),
        created(merchant, bad, uuid.uuid4(), key="b"),
        created(merchant, good2, uuid.uuid4(), key="c"),
        created(merchant, after_bad, uuid.uuid4(), key="b"),  # same key as the bad one: must wait
        created(other, uuid.uuid4(), uuid.uuid4()),
    ]
    outcomes = await CustomerCreatedHandler(db).batch(batch)
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert outcomes[4] is None
    assert isinstance(outcomes[1], RuntimeError)
    assert isinstance(outcomes[3], Deferred)
    assert set(db.customers(merchant)) == {good1, good2}
    assert len(db.customers(other)) == 1
    assert len(announced(db)) == 3


async def test_a_single_failing_event_is_not_retried(db: FakeUnitOfWork) -> None:
    merchant = await with_default(db)
    customer = uuid.uuid4()
    db.poison_customer(customer)
    [outcome] = await CustomerCreatedHandler(db).batch([created(merchant, customer, uuid.uuid4())])
    assert isinstance(outcome, RuntimeError)
    assert db.rollbacks == 1
    assert db.processed == {}  # rolled back with the assignment: it comes again


async def test_an_unavailable_database_fails_every_event_without_retrying(db: FakeUnitOfWork) -> None:
    merchant = await with_default(db)
    db.unavailable = True
    handler = CustomerCreatedHandler(db)
    outcomes = await handler.batch([created(merchant, uuid.uuid4(), uuid.uuid4()) for _ in range(3)])
    assert [type(o) for o in outcomes] == [Unavailable] * 3
    with pytest.raises(Unavailable):
        await handler(created(merchant, uuid.uuid4(), uuid.uuid4()))
    assert db.customers(merchant) == {}


async def test_the_fast_path_skips_known_events_and_remembers_committed_ones(db: FakeUnitOfWork) -> None:
    merchant = await with_default(db)
    remembered = Remembered()
    handler = CustomerCreatedHandler(db, remembered)
    c1, e1 = uuid.uuid4(), uuid.uuid4()
    assert await handler.batch([created(merchant, c1, e1)]) == [None]
    assert remembered.known == {(merchant, e1)}
    db.customers(merchant).clear()  # were the event applied again, the customer would come back
    db.processed.clear()
    assert await handler.batch([created(merchant, c1, e1)]) == [None]
    assert db.customers(merchant) == {}
    assert remembered.lookups == 2


async def test_the_fast_path_is_not_asked_when_nothing_parses(db: FakeUnitOfWork) -> None:
    remembered = Remembered()
    outcomes = await CustomerCreatedHandler(db, remembered).batch([created(None, None, None)])
    assert isinstance(outcomes[0], Rejected)
    assert remembered.lookups == 0


def test_parse_takes_the_correlation_id_from_headers_then_payload_else_makes_one() -> None:
    merchant, customer, event_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    event = created(str(merchant), str(customer), str(event_id), correlation_id="from-payload")
    parsed = parse(event)
    assert (parsed.merchant_id, parsed.customer_id, parsed.event_id) == (merchant, customer, event_id)
    assert parsed.correlation_id == "from-payload"
    with_header = InboundEvent(event.source, event.key, event.payload, {"correlation_id": "from-header"})
    assert parse(with_header).correlation_id == "from-header"
    bad = InboundEvent(event.source, event.key, {**event.payload, "correlation_id": "nul\x00"}, {})
    made = parse(bad).correlation_id
    assert made != "nul\x00"
    assert uuid.UUID(made)


async def test_of_copies_of_an_event_in_a_batch_the_first_counts(db: FakeUnitOfWork) -> None:
    merchant = await with_default(db)
    first, second = uuid.uuid4(), uuid.uuid4()
    event_id = uuid.uuid4()  # a producer bug: one event id, two customers
    handler = CustomerCreatedHandler(db)
    assert await handler.batch([created(merchant, first, event_id), created(merchant, second, event_id)]) == [None] * 2
    assert set(db.customers(merchant)) == {first}
