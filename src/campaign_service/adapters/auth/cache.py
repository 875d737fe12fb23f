"""Remembers verified tokens until they expire (bounded LRU), and verifies each unknown token
once however many requests present it at the same time."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

from campaign_service import metrics
from campaign_service.domain.access import Principal
from campaign_service.service.ports import TokenVerifier

_HIT, _MISS = metrics.AUTH_CACHE.labels("hit"), metrics.AUTH_CACHE.labels("miss")


class CachingVerifier:
    """Only positive results are kept, never longer than `max_ttl_s`; the key is a hash of the
    token, so no token is held in memory beyond the request that brought it."""

    def __init__(
        self, inner: TokenVerifier, max_entries: int, max_ttl_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._inner = inner
        self._max_entries, self._max_ttl_s, self._clock = max_entries, max_ttl_s, clock
        self._entries: OrderedDict[bytes, tuple[float, Principal]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Task[Principal]] = {}
        self._generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forgets every verified token (the keys changed: some may no longer verify)."""
        self._entries.clear()
        self._generation += 1

    async def verify(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).digest()
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self._clock():
                self._entries.move_to_end(key)
                _HIT.inc()
                return entry[1]
            del self._entries[key]
        _MISS.inc()
        generation = self._generation
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._inner.verify(token))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._settled(key, t))
        # shield: one caller giving up (deadline, cancel) must not cancel the others' answer.
        principal = await asyncio.shield(task)
        self._remember(key, principal, generation)
        return principal

    def _settled(self, key: bytes, task: asyncio.Task[Principal]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an answer nobody waited for is not reported as lost

    def _remember(self, key: bytes, principal: Principal, generation: int) -> None:
        now = self._clock()
        until = min(principal.expires_at, now + self._max_ttl_s)
        if principal.reuse_for_s is not None:  # the verifier's own bound (Auth Service max_cache_seconds)
            until = min(until, now + principal.reuse_for_s)
        if self._max_entries <= 0 or until <= now or generation != self._generation:
            return
        self._entries[key] = (until, principal)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
