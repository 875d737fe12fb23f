"""A per-event handler run over a batch: the events of one key in order, different keys concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from campaign_service.events.ports import BatchHandler, Deferred, EventHandler, InboundEvent, Outcome, Rejected


def one_by_one(handler: EventHandler, concurrency: int) -> BatchHandler:
    """A BatchHandler calling `handler` once per event, at most `concurrency` at a time. After an
    event of a key fails (not Rejected), the later events of that key are Deferred."""
    slots = asyncio.Semaphore(concurrency)

    async def handle(events: Sequence[InboundEvent]) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(events)
        by_key: dict[str | int, list[int]] = {}
        for i, event in enumerate(events):
            by_key.setdefault(event.key if event.key is not None else i, []).append(i)  # no key: no order to keep

        async def in_order(indexes: list[int]) -> None:
            for n, i in enumerate(indexes):
                try:
                    async with slots:
                        await handler(events[i])
                except Rejected as exc:
                    outcomes[i] = exc
                except Exception as exc:  # anything but Rejected comes again, and so does the rest of its key
                    outcomes[i] = exc
                    for later in indexes[n + 1 :]:
                        outcomes[later] = Deferred()
                    return

        await asyncio.gather(*(in_order(indexes) for indexes in by_key.values()))
        return outcomes

    return handle
