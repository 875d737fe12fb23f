"""The in-process read cache (one instance, no Redis): bounded in bytes, entries expire after the
TTL, and fills follow the same ticket rule as the Redis cache."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from campaign_service import metrics, redis_keys
from campaign_service.service.ports import AfterCommit, CachedView, EpochBump, ViewKey

# What an entry costs besides its values, so that lookups alone (no fill) are bounded too.
_ENTRY_OVERHEAD = 256


@dataclass
class _Entry:
    ticket: str
    expires_at: float
    fields: dict[str, bytes] = field(default_factory=dict)
    size: int = 0


class MemoryViewCache:
    def __init__(self, ttl_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def lookup(self, key: ViewKey) -> CachedView:
        name, slot = redis_keys.view_slot(key)
        entry = self._live(name)
        if entry is None:
            entry = _Entry(uuid.uuid4().hex, self._clock() + redis_keys.TICKET_TTL_S, size=_ENTRY_OVERHEAD + len(name))
            self._entries[name] = entry
            self._bytes += entry.size
            self._evict()
        else:
            self._entries.move_to_end(name)
        value = entry.fields.get(slot)
        return CachedView(value=value) if value is not None else CachedView(ticket=entry.ticket)

    async def fill(self, key: ViewKey, ticket: str, value: bytes, ttl_s: int | None = None) -> bool:
        name, slot = redis_keys.view_slot(key)
        entry = self._live(name)
        if entry is None or entry.ticket != ticket:
            metrics.CACHE_FILLS_REJECTED.inc()
            return False
        if not entry.fields:
            entry.expires_at = self._clock() + (self._ttl_s if ttl_s is None else ttl_s)
        old = entry.fields.get(slot)
        entry.fields[slot] = value
        grown = len(value) - (len(old) if old is not None else 0)
        entry.size += grown
        self._bytes += grown
        self._evict()
        return name in self._entries

    async def tiers_changing(
        self, merchant_id: UUID, tier_ids: Sequence[str], bump_cache_epoch: EpochBump
    ) -> AfterCommit:
        """One process: dropping the entries after the commit is enough (a fill read before it
        holds a ticket the drop voids), and nothing outlives the process."""
        names = redis_keys.invalidated_by(merchant_id, tier_ids)

        async def after_commit() -> None:
            for name in names:
                self._drop(name)

        return after_commit

    def _live(self, name: str) -> _Entry | None:
        entry = self._entries.get(name)
        if entry is not None and entry.expires_at <= self._clock():
            self._drop(name)
            return None
        return entry

    def _evict(self) -> None:
        while self._bytes > self._max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._bytes -= entry.size
