"""Bounded exponential backoff with jitter, sleeps that end early when asked to stop, restarts.

Restarts of a crashed background loop (`supervise`) are tenacity's: a call retried with a
bounded, jittered exponential wait, a stop condition and hooks for the count and the log. The
loops that back off *inside* themselves (the consumer after a rewind, the relay after a failed
cycle, the outbox listener) keep `Backoff`, a delay sequence with a reset: their retry is not a
call to repeat but the next turn of a loop that also commits offsets, refreshes statistics or
purges in between, which tenacity's call-shaped API would have to be bent around."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import Awaitable, Callable

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

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


async def supervise(
    name: str, run: Callable[[], Awaitable[None]], stop: asyncio.Event, *, initial_s: float = 1.0, max_s: float = 30.0
) -> None:
    """Runs `run()` until it returns or `stop` is set, restarting it after a crash: waits double from
    `initial_s` up to `max_s` (plus up to half `initial_s` of jitter, never beyond `max_s`), each restart
    logged with its traceback and counted in campaign_retries_total{loop=name}."""

    async def attempt() -> None:
        if not stop.is_set():  # also after a wait that `stop` cut short: tenacity would call again
            await run()

    def crashed(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.error("background task crashed; restarting", task=name, exc_info=error)
        metrics.RETRIES.labels(name).inc()

    restarts = AsyncRetrying(
        retry=retry_if_exception_type(Exception),  # a background loop must come back, not die silently
        stop=lambda _: stop.is_set(),
        wait=wait_exponential_jitter(multiplier=initial_s, max=max_s, jitter=initial_s / 2),
        sleep=functools.partial(sleep_unless, stop),
        before_sleep=crashed,
        retry_error_callback=lambda _: None,  # stopped after a crash: nothing to restart
    )
    await restarts(attempt)
