"""The per-instance rate limit: without Redis, and while Redis is down."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from uuid import UUID

from campaign_service.service.ports import RateDecision


class LocalRateLimiter:
    """A sliding-window log per merchant: at most `limit` requests in any `window_s` seconds,
    the same rule the Redis limiter applies across instances."""

    def __init__(
        self, limit: int, window_s: float, max_merchants: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_merchants = max_merchants
        self._clock = clock
        self._logs: OrderedDict[UUID, deque[float]] = OrderedDict()  # least recently seen first

    async def acquire(self, merchant_id: UUID) -> RateDecision:
        now = self._clock()
        log = self._logs.get(merchant_id)
        if log is None:
            log = self._logs[merchant_id] = deque()
            if len(self._logs) > self._max_merchants:
                self._logs.popitem(last=False)
        else:
            self._logs.move_to_end(merchant_id)
        while log and log[0] <= now - self._window_s:
            log.popleft()
        if len(log) >= self._limit:
            return RateDecision(False, log[0] + self._window_s - now, "local")
        log.append(now)
        return RateDecision(True, limiter="local")
