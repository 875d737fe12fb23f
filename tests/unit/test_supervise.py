"""supervise: a crashed background loop comes back after a bounded, growing wait, each restart
counted; it stops restarting when asked to stop."""

from __future__ import annotations

import asyncio
import itertools
import time

from campaign_service import metrics
from campaign_service.backoff import supervise


def restarts(loop: str) -> float:
    return float(metrics.RETRIES.labels(loop)._value.get())


async def test_a_crashing_loop_is_restarted_with_growing_bounded_waits_and_counted() -> None:
    stop = asyncio.Event()
    started: list[float] = []

    async def run() -> None:
        started.append(time.monotonic())
        if len(started) < 5:
            raise RuntimeError("crash")

    before = restarts("test-crashing")
    await asyncio.wait_for(supervise("test-crashing", run, stop, initial_s=0.02, max_s=0.1), 5)
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert len(started) == 5, "restarted until it returned"
    assert restarts("test-crashing") - before == 4
    assert gaps[0] >= 0.02
    assert gaps[2] >= 0.08, "the wait doubles"
    assert max(gaps) < 0.1 + 0.1, "never beyond the bound (plus scheduling)"


async def test_stop_ends_the_wait_and_the_restarts() -> None:
    stop = asyncio.Event()
    calls = 0

    async def run() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("always")

    task = asyncio.create_task(supervise("test-stopped", run, stop, initial_s=30, max_s=30))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)  # returns quietly, within the 30 s wait
    assert calls == 1
