"""Background tasks stop when their block ends, even when a cancellation is swallowed on the way
(a shutdown once hung for good on one: a failed start never returned)."""

from __future__ import annotations

import asyncio

import pytest

from campaign_service.wiring import lifetime


async def test_a_task_that_swallows_its_first_cancel_is_cancelled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifetime, "STEP_TIMEOUT_S", 0.05)
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # swallowed, as suppress(CancelledError) around an inner await does
                raise

    async with lifetime.background("stubborn", stubborn()) as task:
        await asyncio.sleep(0)
    assert task.cancelled()
    assert cancels == 2


async def test_the_activator_loop_ends_on_a_cancel_at_any_point_of_its_wait() -> None:
    """Its wait used to await the cancelled helper tasks under suppress(CancelledError): a cancel
    landing there was swallowed and the loop went on (the wiring never sets `stop`)."""
    from campaign_service.events.activator import Activator

    class Changes:
        scheduled = asyncio.Event()

        async def activate_due(self) -> None:
            return None

    class Store:
        async def next_due(self) -> None:
            return None

    for steps in range(12):  # a cancel after each number of loop turns: every suspension point
        task = asyncio.create_task(Activator(Changes(), Store(), poll_s=0).run(asyncio.Event()))  # type: ignore[arg-type]
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert done, f"a cancel after {steps} turns was swallowed"
        assert task.cancelled()
