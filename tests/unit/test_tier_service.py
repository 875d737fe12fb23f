"""The tier use cases on the in-memory unit of work: the rules, in milliseconds. The same use cases
against PostgreSQL are in tests/integration and tests/e2e."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from uuid import UUID

import pytest

from campaign_service import context, topics
from campaign_service.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    VersionConflict,
)
from campaign_service.domain.tiers import MAX_POINTS, MAX_TIERS_PER_MERCHANT, MUTABLE_FIELDS, TierSpec
from campaign_service.service.errors import Unavailable
from campaign_service.service.ports import AfterCommit, CustomerAssignment, EpochBump
from campaign_service.service.tiers import TierService
from tests.fakes import FakeUnitOfWork

GOLD = TierSpec(name="Gold", min_points=1000, discount_percentage=10, translations={"ar": "ذهبي"})
SILVER = TierSpec(name="Silver", min_points=100)


class Listener:
    """Records what it is told inside the transaction (`told`) and its after-commit step (`heard`)."""

    def __init__(self) -> None:
        self.told: list[tuple[UUID, list[str]]] = []
        self.heard: list[tuple[UUID, list[str]]] = []

    async def tiers_changing(
        self, merchant_id: UUID, tier_ids: Sequence[str], bump_cache_epoch: EpochBump
    ) -> AfterCommit:
        self.told.append((merchant_id, list(tier_ids)))

        async def after_commit() -> None:
            self.heard.append((merchant_id, list(tier_ids)))

        return after_commit


@pytest.fixture
def db() -> FakeUnitOfWork:
    return FakeUnitOfWork()


@pytest.fixture
def listener() -> Listener:
    return Listener()


@pytest.fixture
def service(db: FakeUnitOfWork, listener: Listener) -> TierService:
    return TierService(db, [listener])


def announced(db: FakeUnitOfWork) -> list[tuple[str, list[str]]]:
    """(tier_id, updated_fields) of each vip_tier.updated event committed, in outbox order."""
    return [(m.payload["tier_id"], m.payload["updated_fields"]) for m in db.events(topics.VIP_TIER_UPDATED)]


def heard(listener: Listener) -> list[set[str]]:
    return [set(ids) for _, ids in listener.heard]


async def test_create_announces_every_field_with_actor_and_correlation(
    db: FakeUnitOfWork, service: TierService, listener: Listener
) -> None:
    merchant = db.provision()
    actor = context.actor.set("alice")
    correlation = context.correlation_id.set("corr-1")
    try:
        tier = await service.create(merchant, "gold", GOLD)
    finally:
        context.actor.reset(actor)
        context.correlation_id.reset(correlation)
    assert (tier.tier_id, tier.version, tier.spec) == ("gold", 1, GOLD)
    [message] = db.outbox
    assert message.topic == topics.VIP_TIER_UPDATED
    assert message.key == f"{merchant}:gold"
    assert message.merchant_id == merchant
    assert message.payload["updated_fields"] == list(MUTABLE_FIELDS)
    assert message.payload["actor"] == "alice"
    assert message.payload["correlation_id"] == "corr-1"
    assert message.headers == {"correlation_id": "corr-1"}
    assert message.payload["updated_at"] == int(tier.updated_at.timestamp() * 1000)
    assert listener.heard == [(merchant, ["gold"])]


async def test_a_new_default_clears_and_announces_the_old_one(
    db: FakeUnitOfWork, service: TierService, listener: Listener
) -> None:
    merchant = db.provision()
    await service.create(merchant, "silver", TierSpec(name="Silver", is_default=True))
    await service.create(merchant, "gold", TierSpec(name="Gold", min_points=10, is_default=True))
    silver = db.tiers(merchant)["silver"]
    assert not silver.spec.is_default
    assert silver.version == 2
    assert db.tiers(merchant)["gold"].spec.is_default
    assert announced(db) == [
        ("silver", list(MUTABLE_FIELDS)),
        ("gold", list(MUTABLE_FIELDS)),
        ("silver", ["is_default"]),
    ]
    assert db.outbox[-1].payload["updated_at"] == int(silver.updated_at.timestamp() * 1000)
    assert heard(listener) == [{"silver"}, {"gold", "silver"}]


async def test_setting_the_default_by_update_moves_it(
    db: FakeUnitOfWork, service: TierService, listener: Listener
) -> None:
    merchant = db.provision()
    await service.create(merchant, "silver", TierSpec(name="Silver", is_default=True))
    await service.create(merchant, "gold", GOLD)
    result = await service.update(merchant, "gold", TierSpec(name="", is_default=True), ["is_default"])
    assert result.updated_fields == ["is_default"]
    assert result.tier.spec.is_default
    assert result.tier.version == 2
    assert not db.tiers(merchant)["silver"].spec.is_default
    assert announced(db)[2:] == [("gold", ["is_default"]), ("silver", ["is_default"])]
    assert heard(listener)[2] == {"gold", "silver"}


async def test_unsetting_the_default_clears_no_other_tier(db: FakeUnitOfWork, service: TierService) -> None:
    merchant = db.provision()
    await service.create(merchant, "silver", TierSpec(name="Silver", is_default=True))
    await service.create(merchant, "gold", GOLD)
    await service.update(merchant, "silver", TierSpec(name="", is_default=False), ["is_default"])
    await service.update(merchant, "gold", TierSpec(name="Gold 2"), ["name"])
    assert announced(db)[2:] == [("silver", ["is_default"]), ("gold", ["name"])]
    assert db.tiers(merchant)["gold"].version == 2


async def test_update_changes_only_the_masked_fields(db: FakeUnitOfWork, service: TierService) -> None:
    merchant = db.provision()
    await service.create(merchant, "gold", GOLD)
    result = await service.update(merchant, "gold", TierSpec(name="Platinum", min_points=5), ["name"])
    assert result.updated_fields == ["name"]
    assert result.tier.spec == TierSpec(
        name="Platinum", min_points=1000, discount_percentage=10, translations={"ar": "ذهبي"}
    )
    assert result.tier.version == 2
    assert announced(db)[-1] == ("gold", ["name"])


async def test_update_that_changes_nothing_emits_nothing(
    db: FakeUnitOfWork, service: TierService, listener: Listener
) -> None:
    merchant = db.provision()
    created = await service.create(merchant, "gold", GOLD)
    result = await service.update(merchant, "gold", GOLD, ["*"], expected_version=1)
    assert result.updated_fields == []
    assert result.tier == created
    assert db.tiers(merchant)["gold"].version == 1
    assert len(db.outbox) == 1
    assert len(listener.heard) == 1


async def test_update_result_is_validated_as_a_whole(db: FakeUnitOfWork, service: TierService) -> None:
    merchant = db.provision()
    await service.create(merchant, "gold", GOLD)
    with pytest.raises(InvalidArgument) as raised:  # Arabic name check against the tier's new locale
        await service.update(merchant, "gold", TierSpec(name="", locale="he"), ["locale"])
    assert [v.field for v in raised.value.violations] == ["tier.name"]
    with pytest.raises(InvalidArgument):
        await service.update(merchant, "gold", GOLD, [])
    assert len(db.outbox) == 1


@pytest.mark.parametrize("operation", ["update", "delete"])
async def test_version_conflict_changes_nothing(
    db: FakeUnitOfWork, service: TierService, listener: Listener, operation: str
) -> None:
    merchant = db.provision()
    await service.create(merchant, "gold", GOLD)
    await service.update(merchant, "gold", TierSpec(name="Gold 2"), ["name"])  # now at version 2
    with pytest.raises(VersionConflict, match="version 2, not 1"):
        if operation == "update":
            await service.update(merchant, "gold", TierSpec(name="Gold 3"), ["name"], expected_version=1)
        else:
            await service.delete(merchant, "gold", expected_version=1)
    assert db.tiers(merchant)["gold"].spec.name == "Gold 2"
    assert len(db.outbox) == 2
    assert len(listener.heard) == 2


async def test_expected_version_matches_or_is_any(db: FakeUnitOfWork, service: TierService) -> None:
    merchant = db.provision()
    await service.create(merchant, "gold", GOLD)
    await service.update(merchant, "gold", TierSpec(name="Gold 2"), ["name"], expected_version=1)
    await service.update(merchant, "gold", TierSpec(name="Gold 3"), ["name"], expected_version=0)
    assert db.tiers(merchant)["gold"].version == 3
    for call in (
        service.update(merchant, "gold", TierSpec(name="x"), ["name"], expected_version=-1),
        service.delete(merchant, "gold", expected_version=-1),
    ):
        with pytest.raises(InvalidArgument) as raised:
            await call
        assert raised.value.violations[0].field == "expected_version"
    await service.delete(merchant, "gold", expected_version=3)
    assert db.tiers(merchant) == {}


async def test_deleting_a_held_tier_is_refused(db: FakeUnitOfWork, service: TierService, listener: Listener) -> None:
    merchant = db.provision()
    tier = await service.create(merchant, "gold", GOLD)
    customer = uuid.uuid4()
    db.customers(merchant)[customer] = CustomerAssignment(merchant, customer, "gold", tier.created_at, "test", None)
    with pytest.raises(FailedPrecondition, match="1 customer"):
        await service.delete(merchant, "gold")
    assert "gold" in db.tiers(merchant)
    assert len(db.outbox) == 1
    assert len(listener.heard) == 1
    assignment, held = await service.customer_tier(merchant, customer)
    assert (assignment.customer_id, held.tier_id) == (customer, "gold")


async def test_delete_announces_the_deleted_tier(db: FakeUnitOfWork, service: TierService, listener: Listener) -> None:
    merchant = db.provision()
    tier = await service.create(merchant, "gold", GOLD)
    await service.delete(merchant, "gold")
    assert db.tiers(merchant) == {}
    assert announced(db)[-1] == ("gold", ["deleted"])
    assert db.outbox[-1].payload["updated_at"] == int(tier.updated_at.timestamp() * 1000)
    assert listener.heard[-1] == (merchant, ["gold"])
    with pytest.raises(NotFound):
        await service.delete(merchant, "gold")
    with pytest.raises(NotFound):
        await service.update(merchant, "gold", GOLD, ["name"])


async def test_create_refuses_a_duplicate_and_an_unprovisioned_merchant(
    db: FakeUnitOfWork, service: TierService
) -> None:
    merchant = db.provision()
    await service.create(merchant, "gold", GOLD)
    with pytest.raises(AlreadyExists):
        await service.create(merchant, "gold", SILVER)
    with pytest.raises(NotFound):
        await service.create(uuid.uuid4(), "gold", GOLD)
    with pytest.raises(InvalidArgument) as raised:
        await service.create(merchant, "Bad Id", GOLD)
    assert raised.value.violations[0].field == "tier.tier_id"
    assert len(db.outbox) == 1


async def test_a_merchant_has_at_most_max_tiers(db: FakeUnitOfWork, service: TierService) -> None:
    merchant = db.provision()
    for n in range(MAX_TIERS_PER_MERCHANT):
        await service.create(merchant, f"t{n}", TierSpec(name=f"T{n}", min_points=n))
    with pytest.raises(FailedPrecondition, match=f"at most {MAX_TIERS_PER_MERCHANT}"):
        await service.create(merchant, "one-more", SILVER)
    assert len(db.tiers(merchant)) == MAX_TIERS_PER_MERCHANT


async def test_reads(db: FakeUnitOfWork, service: TierService) -> None:
    merchant = db.provision()
    await service.create(merchant, "gold", GOLD)
    await service.create(merchant, "silver", SILVER)
    await service.create(merchant, "bronze", TierSpec(name="Bronze"))
    assert [t.tier_id for t in await service.list_tiers(merchant)] == ["bronze", "silver", "gold"]
    assert (await service.get_tier(merchant, "gold")).spec == GOLD
    with pytest.raises(NotFound):
        await service.get_tier(merchant, "platinum")
    with pytest.raises(InvalidArgument):
        await service.get_tier(merchant, "")
    with pytest.raises(NotFound):
        await service.customer_tier(merchant, uuid.uuid4())
    assert db.commits == 3 + 4
    assert len(db.outbox) == 3


@pytest.mark.parametrize(
    ("points", "tier_id"),
    [(0, "bronze"), (99, "bronze"), (100, "silver"), (999, "silver"), (1000, "gold"), (2**63 - 1, "gold")],
)
async def test_evaluate_picks_the_highest_tier_reached(
    db: FakeUnitOfWork, service: TierService, points: int, tier_id: str
) -> None:
    merchant = db.provision()
    await service.create(merchant, "gold", GOLD)
    await service.create(merchant, "silver", SILVER)
    await service.create(merchant, "bronze", TierSpec(name="Bronze"))
    assert (await service.evaluate(merchant, points)).tier_id == tier_id


async def test_evaluate_bounds(db: FakeUnitOfWork, service: TierService) -> None:
    merchant = db.provision()
    with pytest.raises(NotFound):
        await service.evaluate(merchant, 5)
    await service.create(merchant, "top", TierSpec(name="Top", min_points=MAX_POINTS))
    assert (await service.evaluate(merchant, MAX_POINTS)).tier_id == "top"
    assert (await service.evaluate(merchant, 2**63 - 1)).tier_id == "top"  # clamped to the column's range
    with pytest.raises(NotFound):
        await service.evaluate(merchant, MAX_POINTS - 1)
    for points in (-1, 2**63):
        with pytest.raises(InvalidArgument) as raised:
            await service.evaluate(merchant, points)
        assert raised.value.violations[0].field == "points"


@pytest.mark.parametrize("after_commit", [Unavailable("connection lost"), asyncio.CancelledError()])
async def test_a_write_whose_commit_answer_was_lost_still_invalidates(
    db: FakeUnitOfWork, service: TierService, listener: Listener, after_commit: BaseException
) -> None:
    merchant = db.provision()
    await service.create(merchant, "silver", TierSpec(name="Silver", is_default=True))
    db.after_commit = after_commit
    with pytest.raises(type(after_commit)):
        await service.create(merchant, "gold", TierSpec(name="Gold", is_default=True))
    assert "gold" in db.tiers(merchant)  # it landed
    assert heard(listener)[-1] == {"gold", "silver"}


async def test_a_write_that_failed_before_its_commit_invalidates_nothing(
    db: FakeUnitOfWork, service: TierService, listener: Listener
) -> None:
    merchant = db.provision()
    await service.create(merchant, "silver", TierSpec(name="Silver", is_default=True))
    db.unavailable = True
    with pytest.raises(Unavailable):
        await service.create(merchant, "gold", GOLD)
    db.unavailable = False
    await service.create(merchant, "gold", GOLD)
    with pytest.raises(AlreadyExists):  # refused after silver stopped being the default: rolled back
        await service.create(merchant, "gold", TierSpec(name="Gold", is_default=True))
    assert db.tiers(merchant)["silver"].spec.is_default
    assert db.tiers(merchant)["silver"].version == 1
    assert heard(listener) == [{"silver"}, {"gold"}]
    assert announced(db) == [("silver", list(MUTABLE_FIELDS)), ("gold", list(MUTABLE_FIELDS))]
    assert db.rollbacks == 1


async def test_a_write_that_failed_inside_its_transaction_invalidates_nothing(
    db: FakeUnitOfWork, service: TierService, listener: Listener
) -> None:
    merchant = db.provision()
    await service.create(merchant, "silver", TierSpec(name="Silver", is_default=True))
    db.fail("tiers.insert", Unavailable("connection lost"))  # after silver's default was cleared
    with pytest.raises(Unavailable):
        await service.create(merchant, "gold", TierSpec(name="Gold", is_default=True))
    assert db.tiers(merchant)["silver"].spec.is_default  # rolled back, surely: nothing to invalidate
    assert heard(listener) == [{"silver"}]


async def test_an_event_the_outbox_refused_rolls_the_change_back(
    db: FakeUnitOfWork, service: TierService, listener: Listener
) -> None:
    merchant = db.provision()
    db.fail("outbox.add", Unavailable("connection lost"))
    with pytest.raises(Unavailable):
        await service.create(merchant, "gold", GOLD)
    assert db.tiers(merchant) == {}
    assert listener.heard == [(merchant, ["gold"])]  # told before the commit: invalidated needlessly, safely
