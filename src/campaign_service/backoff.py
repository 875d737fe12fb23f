"""Bounded exponential backoff with jitter, sleeps that end early when asked to stop, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import structlog

from campaign_service import metrics

log = structlog.get_logger(__name__)


class Backoff:
    """Delays that double from `initial` up to `maximum` (never beyond), with +-20 % jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return min(self._maximum, delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        self._next = self._initial


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def first_of(*waits: Awaitable[object], within: float | None = None) -> None:
    """Returns when any of `waits` finishes (or after `within` seconds); the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


async def supervise(name: str, run: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Runs `run()` until `stop` is set, restarting it (with backoff, counted) if it crashes."""
    backoff = Backoff(1.0, 30.0)
    while not stop.is_set():
        try:
            await run()
            return
        except Exception:  # a background loop must come back, not die silently
            log.exception("background task crashed; restarting", task=name)
            metrics.RETRIES.labels(name).inc()
            await sleep_unless(stop, backoff.next())
