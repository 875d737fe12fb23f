"""The relay's claim loops are woken one at a time (events/relay.py): a row committed while one
claim is still waiting for the broker is claimed by an idle loop at once, and a wake with a loop
idle costs one claim, not one per loop (each consumer batch's commit wakes the relay)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from campaign_service.domain.events import OutboxMessage
from campaign_service.events.ports import OutboxStats
from campaign_service.events.relay import OutboxRelay, RelaySettings


def message() -> OutboxMessage:
    return OutboxMessage(
        event_id=uuid.uuid4(),
        merchant_id=uuid.uuid4(),
        topic="vip_tier.assigned",
        key="k",
        payload={},
        headers={},
    )


@dataclass
class Claim:
    messages: list[OutboxMessage]
    more: bool = False

    async def mark_published(self, event_ids: Sequence[UUID]) -> None:
        pass

    async def mark_failed(self, event_ids: Sequence[UUID], error: str) -> None:
        pass


@dataclass
class Store:
    pending: list[OutboxMessage] = field(default_factory=list)
    claims: int = 0

    @contextlib.asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[Claim]:
        self.claims += 1
        taken, self.pending = self.pending[:limit], self.pending[limit:]
        yield Claim(taken)

    async def stats(self) -> OutboxStats:
        return OutboxStats(0, 0.0)

    async def purge(self, older_than_s: float) -> int:
        return 0

    async def purge_processed(self, older_than_s: float) -> int:
        return 0


@dataclass
class Broker:
    """Acknowledges nothing until released: publishes in flight, as while librdkafka waits for acks."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0

    async def publish(self, batch: Sequence[OutboxMessage]) -> list[str | None]:
        self.in_flight += 1
        await self.release.wait()
        self.in_flight -= 1
        return [None] * len(batch)

    async def close(self) -> None:
        pass


async def until(condition: object, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_a_row_committed_while_a_claim_publishes_is_claimed_by_an_idle_loop_at_once() -> None:
    store, broker = Store(), Broker()
    relay = OutboxRelay(store, broker, RelaySettings(concurrency=2, poll_interval_s=300))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await until(lambda: store.claims >= 2)  # both loops looked once at start: nothing
    store.pending.append(message())
    relay.wake()
    await until(lambda: broker.in_flight == 1)
    store.pending.append(message())
    relay.wake()  # the first claim still waits for its acknowledgements
    await until(lambda: broker.in_flight == 2)
    broker.release.set()
    stop.set()
    relay.wake()
    await asyncio.wait_for(task, 5)


async def test_a_wake_with_a_loop_idle_costs_one_claim() -> None:
    store, broker = Store(), Broker()
    broker.release.set()
    relay = OutboxRelay(store, broker, RelaySettings(concurrency=4, poll_interval_s=300))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await until(lambda: store.claims >= 4)
    await asyncio.sleep(0.05)
    before = store.claims
    for _ in range(3):
        relay.wake()
        await asyncio.sleep(0.05)
    assert store.claims == before + 3
    stop.set()
    await asyncio.wait_for(task, 5)


@dataclass
class HeldStore(Store):
    """Rows in a shard that one claim at a time may take: a second claim meanwhile gets nothing
    and says that rows wait (`more`), as PgOutbox's shard locks do."""

    held: bool = False

    @contextlib.asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[Claim]:
        self.claims += 1
        if self.held:
            yield Claim([], more=bool(self.pending))
            return
        self.held = True
        try:
            taken, self.pending = self.pending[:limit], self.pending[limit:]
            yield Claim(taken)
        finally:
            self.held = False


async def test_a_loop_that_found_the_shards_held_claims_when_the_holding_claim_ends() -> None:
    """Not after its busy retry (another replica's claims can only be waited out): the claim that
    held the shards belongs to this relay, and its end is known at once."""
    store, broker = HeldStore(), Broker()
    relay = OutboxRelay(store, broker, RelaySettings(concurrency=2, poll_interval_s=300, busy_retry_s=60))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await until(lambda: store.claims >= 2)
    store.pending.append(message())
    relay.wake()
    await until(lambda: broker.in_flight == 1)  # one loop publishes, holding the shard
    store.pending.append(message())
    relay.wake()  # the other loop claims: the shard is held, it waits
    await until(lambda: store.claims >= 4)
    assert store.pending
    broker.release.set()  # the first claim ends
    await until(lambda: not store.pending, timeout=2.0)  # far sooner than the 60 s busy retry
    stop.set()
    relay.wake()
    await asyncio.wait_for(task, 5)
