"""Remembers verified tokens until they may no longer be reused (cachetools' TLRUCache: a bounded
LRU whose entries each carry their own expiry), and verifies each unknown token once however
many requests present it at the same time.

A hit is one `__getitem__` (a KeyError once expired): 2.7 µs per cached verify against 2.2 µs
for the OrderedDict this replaced (min of 7 runs, process time, one core); `.get()` checks the
expiry twice and cost 4.6 µs."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

from cachetools import TLRUCache

from campaign_service import metrics
from campaign_service.domain.access import Principal
from campaign_service.service.ports import TokenVerifier

_HIT, _MISS = metrics.AUTH_CACHE.labels("hit"), metrics.AUTH_CACHE.labels("miss")


def _until(key: bytes, entry: tuple[float, Principal], now: float) -> float:
    return entry[0]


class CachingVerifier:
    """Only positive results are kept, until the earliest of the token's expiry, `max_ttl_s`
    and the verifier's own bound (`Principal.reuse_for_s`, the Auth Service's
    `max_cache_seconds`). The key is a hash of the token, so no token is held in memory beyond
    the request that brought it."""

    def __init__(
        self, inner: TokenVerifier, max_entries: int, max_ttl_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._inner = inner
        self._max_entries, self._max_ttl_s, self._clock = max_entries, max_ttl_s, clock
        self._entries: TLRUCache[bytes, tuple[float, Principal]] = TLRUCache(max(1, max_entries), _until, clock)
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
        try:
            principal = self._entries[key][1]  # KeyError once expired
        except KeyError:
            pass
        else:
            _HIT.inc()
            return principal
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
