"""Lookup traffic for chaos tests: GetVIPTier calls with a deadline, each recorded with its outcome,
its answer, and when it started and ended; failure windows from the record."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from tests.tokens import auth_channel, mint_token

# The client reconnects within a second after the service comes back (gRPC's default backoff
# starts at 1 s and grows to 120 s, which would measure the client, not the service).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def lookup_channel(target: str) -> grpc.aio.Channel:
    """A channel with an admin token that outlives the longest chaos run."""
    return auth_channel(target, mint_token(ttl_s=3600), options=CHANNEL_OPTIONS)


@dataclass(frozen=True)
class TierFacts:
    """The fields of a GetVIPTier answer the chaos tests check: the right merchant's right tier."""

    merchant_id: str
    tier_id: str
    name: str
    min_points: int

    @classmethod
    def of(cls, tier: pb.VIPTier) -> TierFacts:
        return cls(tier.merchant_id, tier.tier_id, tier.name, tier.min_points)


@dataclass(frozen=True)
class Call:
    started: float  # time.monotonic()
    ended: float
    code: grpc.StatusCode
    asked: TierFacts  # what was asked for, and what the answer should be (unless it was renamed)
    got: TierFacts | None = None

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK

    @property
    def wrong(self) -> bool:
        """OK, but not the tier asked for (for tiers that do not change)."""
        return self.ok and self.got != self.asked

    @property
    def seconds(self) -> float:
        return self.ended - self.started


async def get_tier(stub: campaign_grpc.CampaignServiceAsyncStub, asked: TierFacts, deadline_s: float) -> Call:
    started = time.monotonic()
    try:
        got = await stub.GetVIPTier(
            pb.GetVIPTierRequest(merchant_id=asked.merchant_id, tier_id=asked.tier_id), timeout=deadline_s
        )
    except grpc.aio.AioRpcError as err:
        return Call(started, time.monotonic(), err.code(), asked)
    return Call(started, time.monotonic(), grpc.StatusCode.OK, asked, TierFacts.of(got))


async def burst(
    stub: campaign_grpc.CampaignServiceAsyncStub, expected: Sequence[TierFacts], calls: int, deadline_s: float
) -> list[Call]:
    """`calls` lookups at once (a client that does not back off)."""
    return list(await asyncio.gather(*(get_tier(stub, random.choice(expected), deadline_s) for _ in range(calls))))


@dataclass(frozen=True)
class Window:
    start: float
    end: float
    failed: int

    @property
    def seconds(self) -> float:
        return self.end - self.start


def failure_windows(calls: Sequence[Call]) -> list[Window]:
    """Spans in which every call failed: from the start of the first failed call after a success
    to the end of the last failed call before the next success (calls ordered by their end)."""
    windows: list[Window] = []
    current: Window | None = None
    for c in sorted(calls, key=lambda c: c.ended):
        if c.ok:
            if current is not None:
                windows.append(current)
                current = None
        elif current is None:
            current = Window(c.started, c.ended, 1)
        else:
            current = Window(min(current.start, c.started), c.ended, current.failed + 1)
    if current is not None:
        windows.append(current)
    return windows


@dataclass
class LookupLoad:
    """A steady GetVIPTier load: `workers` concurrent callers, together about `rate` calls per second,
    each call with its own deadline. `target` may change (a restarted service on other ports)."""

    target: str
    expected: Sequence[TierFacts]
    rate: float = 100.0
    workers: int = 8
    deadline_s: float = 1.0
    calls: list[Call] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> list[Call]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.calls

    async def _worker(self) -> None:
        period = self.workers / self.rate
        target = ""
        channel: grpc.aio.Channel | None = None
        stub: campaign_grpc.CampaignServiceAsyncStub | None = None
        try:
            while not self._stop.is_set():
                if target != self.target or stub is None:
                    if channel is not None:
                        await channel.close()
                    target = self.target
                    channel = lookup_channel(target)
                    stub = campaign_grpc.CampaignServiceStub(channel)
                call = await get_tier(stub, random.choice(self.expected), self.deadline_s)
                self.calls.append(call)
                if (pause := period - call.seconds) > 0:
                    await asyncio.sleep(pause)
        finally:
            if channel is not None:
                await channel.close()

    def between(self, start: float, end: float) -> list[Call]:
        return [c for c in self.calls if start <= c.ended and c.started <= end]
