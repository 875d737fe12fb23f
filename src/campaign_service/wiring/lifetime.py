"""Shutdown steps that are bounded and never stop the steps after them, and background tasks
that live exactly as long as the block that started them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)

STEP_TIMEOUT_S = 5.0


async def bounded(what: str, step: Callable[[], Awaitable[Any]], timeout_s: float = STEP_TIMEOUT_S) -> None:
    """One shutdown step; its failure or overrun is logged and does not keep the others from running."""
    try:
        await asyncio.wait_for(step(), timeout_s)
    except Exception:  # shutdown must go on; the failure is logged with its trace
        log.exception("shutdown step failed", step=what)


@contextlib.asynccontextmanager
async def background(name: str, work: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """`work` runs as a task while the block runs; leaving the block cancels it and waits for it,
    cancelling again every `STEP_TIMEOUT_S` while it runs on: a cancel swallowed on the way (by
    `suppress(CancelledError)`, or by 3.11's `asyncio.wait_for` when its inner call finishes at the
    same moment) must not keep the process from stopping."""
    task = asyncio.create_task(work, name=name)
    try:
        yield task
    finally:
        task.cancel()
        while not (await asyncio.wait([task], timeout=STEP_TIMEOUT_S))[0]:
            log.warning("background task ignored its cancellation; cancelling again", task=name)
            task.cancel()
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", task=name, error=repr(task.exception()))
