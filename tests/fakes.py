"""In-memory fakes of the unit of work and its repositories, for unit tests of the use cases.

`FakeUnitOfWork` is a whole database of merchants in dicts. It runs the same unit of work as
production (service/unit_of_work.AbstractUnitOfWork: events written to the outbox before the
commit, tiers written reported), and keeps what the PostgreSQL schema enforces where a use case
relies on it: merchants must be provisioned (NotFound), one tier per id (AlreadyExists), at most
one default tier (VersionConflict), versions and updated_at move on every write, a tier held by
customers cannot be deleted (the foreign key), a customer keeps its first tier, an event id is
processed once. A transaction works on a copy of its merchant's rows and applies them when its
block exits cleanly; an exception leaves nothing behind, as a rollback does. A write in a
read-only transaction fails the test.

What it does not model: row locks and concurrent transactions of one merchant (the last commit
wins here), Row-Level Security, the database's CHECK constraints (the domain checks come first).

Faults to inject: `poison_customer` (assigning that customer raises, as a bad row would),
`fail("tiers.insert", error)` (the next such write raises `error`; names are repository.method),
`unavailable` (every transaction fails as a lost database), `after_commit` (the next write
commits, then this is raised, e.g. Unavailable or CancelledError: the caller cannot know it landed).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from uuid import UUID

from campaign_service.domain.errors import AlreadyExists, NotFound, VersionConflict
from campaign_service.domain.events import OutboxMessage
from campaign_service.domain.locales import MerchantLocales
from campaign_service.domain.tier_changes import ApplyMode, TierChangeJob
from campaign_service.domain.tiers import TierSpec, VIPTier
from campaign_service.service.errors import Unavailable
from campaign_service.service.ports import CustomerAssignment
from campaign_service.service.unit_of_work import AbstractUnitOfWork


def _now() -> datetime:
    now = datetime.now(UTC)  # timestamptz(3): what PostgreSQL stores is milliseconds
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass
class MerchantRows:
    """One merchant's rows."""

    tiers: dict[str, VIPTier] = field(default_factory=dict)
    customers: dict[UUID, CustomerAssignment] = field(default_factory=dict)
    locales: MerchantLocales = field(default_factory=MerchantLocales)

    def copy(self) -> MerchantRows:
        return MerchantRows(dict(self.tiers), dict(self.customers), self.locales)  # the values are immutable


class _Transaction:
    """The rows one transaction sees and writes, applied by the fake at commit."""

    def __init__(self, db: FakeUnitOfWork, merchant_id: UUID, readonly: bool) -> None:
        self.db = db
        self.merchant_id = merchant_id
        self.readonly = readonly
        self.rows = db.rows[merchant_id].copy() if merchant_id in db.rows else None
        self.processed: dict[UUID, str] = {}
        self.outbox: list[OutboxMessage] = []
        self.epoch_advances = 0
        self.jobs = {k: v for k, v in db.jobs.items() if v.merchant_id == merchant_id}
        self.wrote = False

    def write(self, operation: str) -> MerchantRows:
        assert not self.readonly, "a write in a read-only transaction"
        fault = self.db.faults.pop(operation, None)
        if fault is not None:
            raise fault
        self.wrote = True
        if self.rows is None:
            raise NotFound("merchant is not provisioned")
        return self.rows

    def read(self) -> MerchantRows:
        return self.rows if self.rows is not None else MerchantRows()


class FakeTierRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def get(self, tier_id: str, *, for_update: bool = False) -> VIPTier | None:
        return self._tx.read().tiers.get(tier_id)

    async def all(self) -> list[VIPTier]:
        return sorted(self._tx.read().tiers.values(), key=lambda t: (t.spec.min_points, t.tier_id))

    async def count(self) -> int:
        return len(self._tx.read().tiers)

    async def evaluate(self, points: int) -> VIPTier | None:
        reached = [t for t in self._tx.read().tiers.values() if t.spec.min_points <= points]
        return max(reached, key=lambda t: (t.spec.min_points, t.tier_id), default=None)

    async def default(self) -> VIPTier | None:
        return next((t for t in self._tx.read().tiers.values() if t.spec.is_default), None)

    async def insert(self, tier_id: str, spec: TierSpec) -> VIPTier:
        rows = self._tx.write("tiers.insert")
        if tier_id in rows.tiers:
            raise AlreadyExists(f"tier {tier_id!r} already exists")
        self._check_one_default(rows, tier_id, spec)
        now = _now()
        rows.tiers[tier_id] = VIPTier(uuid.uuid4(), self._tx.merchant_id, tier_id, spec, 1, now, now)
        return rows.tiers[tier_id]

    async def update(self, tier_id: str, spec: TierSpec, changed: Sequence[str]) -> VIPTier:
        rows = self._tx.write("tiers.update")
        self._check_one_default(rows, tier_id, spec)
        current = rows.tiers[tier_id]
        rows.tiers[tier_id] = replace(current, spec=spec, version=current.version + 1, updated_at=_now())
        return rows.tiers[tier_id]

    async def clear_default(self, except_tier_id: str) -> list[str]:
        rows = self._tx.write("tiers.clear_default")
        cleared = [t for t in rows.tiers.values() if t.spec.is_default and t.tier_id != except_tier_id]
        for tier in cleared:
            rows.tiers[tier.tier_id] = replace(
                tier, spec=replace(tier.spec, is_default=False), version=tier.version + 1, updated_at=_now()
            )
        return [t.tier_id for t in cleared]

    async def delete(self, tier_id: str) -> None:
        rows = self._tx.write("tiers.delete")
        # customer_tiers' foreign key is ON DELETE RESTRICT: the use case must look first
        assert not any(c.tier_id == tier_id for c in rows.customers.values()), "deleting a held tier"
        rows.tiers.pop(tier_id, None)

    @staticmethod
    def _check_one_default(rows: MerchantRows, tier_id: str, spec: TierSpec) -> None:
        if spec.is_default and any(t.spec.is_default and t.tier_id != tier_id for t in rows.tiers.values()):
            raise VersionConflict("another default tier was set concurrently; retry")


class FakeCustomerTierRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def get(self, customer_id: UUID) -> CustomerAssignment | None:
        return self._tx.read().customers.get(customer_id)

    async def assign(self, assignments: Sequence[CustomerAssignment]) -> set[UUID]:
        rows = self._tx.write("customers.assign")
        for a in assignments:
            if a.customer_id in self._tx.db.poisoned:
                raise self._tx.db.poisoned[a.customer_id]
            assert a.tier_id in rows.tiers, "customer_tiers' foreign key: no such tier"
        assigned: set[UUID] = set()
        for a in assignments:
            if a.customer_id not in rows.customers:
                rows.customers[a.customer_id] = a
                assigned.add(a.customer_id)
        return assigned

    async def holders(self, tier_id: str) -> int:
        return sum(c.tier_id == tier_id for c in self._tx.read().customers.values())

    async def any(self) -> bool:
        return bool(self._tx.read().customers)


class FakeInboxRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def mark_processed(self, event_ids: Sequence[UUID], event_type: str) -> set[UUID]:
        if not event_ids:
            return set()
        self._tx.write("inbox.mark_processed")
        fresh: set[UUID] = set()
        for event_id in event_ids:  # processed_events' key is the event id alone
            if event_id not in self._tx.db.processed and event_id not in self._tx.processed:
                self._tx.processed[event_id] = event_type
                fresh.add(event_id)
        return fresh


class FakeCacheEpoch:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def advance(self) -> None:
        self._tx.write("cache_epoch.advance")
        self._tx.epoch_advances += 1


class FakeOutbox:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def add(self, messages: Sequence[OutboxMessage]) -> None:
        if messages:
            self._tx.write("outbox.add")
            self._tx.outbox += messages


class FakeTierChangeJobs:
    """tier_change_jobs: enqueue is idempotent per change (the table's unique key)."""

    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def enqueue(
        self, change_id: UUID, *, mode: ApplyMode, config_version: int, not_before: datetime | None = None
    ) -> UUID:
        jobs = self._tx.jobs
        for job in jobs.values():
            if job.change_id == change_id:
                return job.job_id
        self._tx.write("tier_change_jobs.enqueue")
        now = _now()
        job = TierChangeJob(
            self._tx.merchant_id, uuid.uuid4(), change_id, mode, "queued", config_version,
            not_before or now, 0, 0, 0, now, None, None, None,
        )  # fmt: skip
        jobs[job.job_id] = job
        return job.job_id

    async def get(self, job_id: UUID) -> TierChangeJob | None:
        return self._tx.jobs.get(job_id)

    async def move_holders(self, tier_id: str, *, mode: ApplyMode, job_id: UUID) -> int:
        """Simplified (the fake keeps no points): holders go to the tier just below, else the
        lowest other tier. The real evaluation is SQL (adapters/postgres/tier_change_jobs.py)."""
        rows = self._tx.write("tier_change_jobs.move_holders")
        ladder = sorted(rows.tiers.values(), key=lambda t: (t.spec.min_points, t.tier_id))
        rank = [t.tier_id for t in ladder].index(tier_id)
        rest = [t for t in ladder if t.tier_id != tier_id]
        if not rest:
            return 0
        target = ladder[rank - 1] if rank > 0 else rest[0]
        moved = 0
        for cid, c in list(rows.customers.items()):
            if c.tier_id == tier_id:
                rows.customers[cid] = replace(c, tier_id=target.tier_id, source="program", cause_event_id=job_id)
                moved += 1
        return moved


class FakeLocaleRepository:
    def __init__(self, tx: _Transaction) -> None:
        self._tx = tx

    async def get(self, *, for_update: bool = False) -> MerchantLocales:
        return self._tx.read().locales

    async def save(self, locales: tuple[str, ...]) -> MerchantLocales:
        rows = self._tx.write("locales.save")
        rows.locales = MerchantLocales(locales, rows.locales.version + 1, _now())
        return rows.locales

    async def scheduled_uses(self) -> list[tuple[str, frozenset[str]]]:
        return []  # the in-memory store keeps no scheduled changes


@dataclass(frozen=True)
class FakeRepositories:
    tiers: FakeTierRepository
    customers: FakeCustomerTierRepository
    inbox: FakeInboxRepository
    outbox: FakeOutbox
    cache_epoch: FakeCacheEpoch
    tier_change_jobs: FakeTierChangeJobs
    locales: FakeLocaleRepository


class FakeUnitOfWork(AbstractUnitOfWork):
    def __init__(self, merchants: Iterable[UUID] = ()) -> None:
        self.rows: dict[UUID, MerchantRows] = {m: MerchantRows() for m in merchants}
        self.processed: dict[UUID, str] = {}  # event id -> event type
        self.outbox: list[OutboxMessage] = []  # committed messages, in publishing order
        self.commits = 0
        self.cache_epoch = 0  # advances committed
        self.rollbacks = 0
        self.poisoned: dict[UUID, Exception] = {}
        self.unavailable = False
        self.after_commit: BaseException | None = None
        self.faults: dict[str, BaseException] = {}
        self.jobs: dict[UUID, TierChangeJob] = {}  # tier_change_jobs, every merchant's

    def provision(self, merchant_id: UUID | None = None) -> UUID:
        merchant = merchant_id or uuid.uuid4()
        self.rows.setdefault(merchant, MerchantRows())
        return merchant

    def fail(self, operation: str, error: BaseException) -> None:
        """The next write `operation` ("tiers.insert", "inbox.mark_processed", ...) raises `error`."""
        self.faults[operation] = error

    def poison_customer(self, customer_id: UUID, error: Exception | None = None) -> None:
        """Assigning this customer fails, so its whole transaction does."""
        self.poisoned[customer_id] = error or RuntimeError(f"bad row for customer {customer_id}")

    def tiers(self, merchant_id: UUID) -> dict[str, VIPTier]:
        return self.rows[merchant_id].tiers

    def customers(self, merchant_id: UUID) -> dict[UUID, CustomerAssignment]:
        return self.rows[merchant_id].customers

    def events(self, topic: str | None = None) -> list[OutboxMessage]:
        return [m for m in self.outbox if topic is None or m.topic == topic]

    @asynccontextmanager
    async def _transaction(self, merchant_id: UUID, *, readonly: bool) -> AsyncIterator[FakeRepositories]:
        if self.unavailable:
            raise Unavailable("database unavailable (fake)")
        tx = _Transaction(self, merchant_id, readonly)
        try:
            yield FakeRepositories(
                FakeTierRepository(tx),
                FakeCustomerTierRepository(tx),
                FakeInboxRepository(tx),
                FakeOutbox(tx),
                FakeCacheEpoch(tx),
                FakeTierChangeJobs(tx),
                FakeLocaleRepository(tx),
            )
        except BaseException:
            self.rollbacks += 1
            raise
        if tx.wrote:
            assert tx.rows is not None
            taken = self.processed.keys() & tx.processed.keys()
            assert not taken, f"events processed by two transactions at once: {taken}"
            self.rows[merchant_id] = tx.rows
            self.processed.update(tx.processed)
            self.outbox += tx.outbox
            self.cache_epoch += tx.epoch_advances
            self.jobs.update(tx.jobs)
        self.commits += 1
        if tx.wrote and self.after_commit is not None:
            error, self.after_commit = self.after_commit, None
            raise error
