"""The shared read cache on Redis, keyed as the plan says (`cache:{merchant_id}:{tier_id}`,
`cache:{merchant_id}:tiers`), one hash per key with a field per view and display locale.

The promise: once a write is acknowledged, no lookup through any instance answers what was read
before it - also across a Redis restart with persistence, a Redis failover, and the death of the
writer while Redis is down. How it holds:

1. Tickets. A lookup that misses hands out the key's generation (creating one if the key is
   absent); a fill only lands while the generation is still the one handed out. The lookup comes
   before the database read, so a value read before a write's commit can only land if nothing
   removed the generation between the lookup and the fill.

2. Fill blocks. As the last step of its transaction, before COMMIT, a write blocks its keys in
   Redis: the values and the generation are deleted and a marker of the write (`w:<token>`,
   counted in `w`) is added; while a key carries a marker, lookups hand out no ticket, so nothing
   read before the commit can be filled. After the commit (or a commit of unknown outcome) the
   write lifts its marker and deletes the key. If the writer dies in between, the marker expires
   after `block_ttl_s`, twice the bound of the COMMIT that follows it, and no old value was filled
   meanwhile (a block that arrives after its writer gave up on it - Redis was paused - expires
   the same way). So with Redis reachable, the write's predecessor is gone from Redis before COMMIT.

3. The durable epoch. A write whose block did not reach Redis advances the epoch in PostgreSQL
   (`cache_epoch`, migration 0008) in its own transaction, so the advance commits with the write
   or not at all, whatever happens to the writer afterwards. Each key's hash records the epoch it
   was created under (`ep`); an instance trusts a value only when its hash's epoch is the epoch
   the instance confirmed with PostgreSQL, so every answer cached before the write is distrusted
   by every instance that has confirmed since. Such a write is acknowledged only LEASE x 1.1
   after its commit (see 4), so every instance has confirmed since by then.

4. Confirmation. An instance trusts Redis only while all of this holds: it confirmed the epoch
   with PostgreSQL less than the lease ago (`cache_epoch_lease_ms`, measured from before the
   query was sent; refreshed in the background every third of it, never on a lookup), every
   lookup runs on the very connection that confirmation used (RedisPipe.execute_on: a reconnect
   - a restarted Redis, a failover to another address - makes lookups fail until confirmed
   again), and no Redis call failed since. The record `cache:epoch` in Redis holds
   "<epoch> <run_id>:<master_replid>" of the Redis it was confirmed on; each lookup checks it in
   the same script, so an instance that confirmed a newer epoch distrusts the old one for all.

5. A replaced Redis. A restarted Redis (new run_id) or a promoted replica (new run_id and
   replication id) may have lost acknowledged deletions and blocks (no fsync, asynchronous
   replication). Confirming on a Redis whose identity is not the record's (or with no record)
   advances the epoch before trusting it, so nothing cached before the restart or failover is
   trusted after it. A replica is never trusted (it may lag).

6. A Redis Cluster. "The Redis" above is each master: every master holds its own record (under
   a hash tag that lands on it), confirmation covers every master's connection and identity, and
   a lookup trusts only the connection to its key's master that was confirmed. One replaced
   master advances the epoch for all (a cold cache everywhere), as one replaced Redis does.

Hence, for an answer X cached from a read before an acknowledged write W: if W's block reached
the Redis that X is in and that Redis was not replaced since, X was deleted and could not be
filled again (2, 1); if it was replaced, the epoch advanced before anyone trusted the new one
(5); if W's block did not reach Redis, the epoch advanced in W's transaction and every instance
confirmed it before W was acknowledged (3, 4). The costs: a cached lookup sends one script, as
before (the record check and epoch compare are inside it) - no PostgreSQL round trip; each
instance reads one row every third of the lease; a write while Redis is unreachable waits the
lease; a Redis restart or failover starts a cold cache. Assumed: monotonic clocks of instances
tick at the same rate (durations only are compared), and a COMMIT takes effect within `block_ttl_s` of its block.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

import asyncpg
import structlog

from campaign_service import metrics, redis_keys
from campaign_service.adapters.redis.client import REDIS_FAILURES, RedisBreaker, unique_token
from campaign_service.adapters.redis.pipe import ConnectionChanged, RedisPipe
from campaign_service.service.ports import AfterCommit, CachedView, EpochBump, ViewKey

log = structlog.get_logger(__name__)

# A write's fill block must outlive the COMMIT that follows it: the service passes twice the
# bound of a statement (statement timeout + 1 s, asyncpg's command timeout).
MARKER_TTL_S = 60

# KEYS[1] cache key; ARGV: field, generation field, fresh ticket, ticket TTL, epoch, record, the
# record's key. Returns {value} on a hit, {false, ticket} on a miss, {false, false, 0} when a write
# blocks the key, {false, false, 1} when the record is not the caller's. In a cluster the record
# is the one of the node the key lives on, in another slot (a key per slot would be 16,384 records
# to confirm): the flag lets the script read it undeclared, and Redis refuses if it is not local.
_LOOKUP = """#!lua flags=allow-cross-slot-keys
if redis.call('GET', ARGV[7]) ~= ARGV[6] then return {false, false, 1} end
local found = redis.call('HMGET', KEYS[1], ARGV[1], ARGV[2], 'ep', 'w')
if found[4] then return {false, false, 0} end
if found[3] == ARGV[5] then
  if found[1] then return {found[1]} end
  if found[2] then return {false, found[2]} end
else
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3], 'ep', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {false, ARGV[3]}
"""
# KEYS[1] cache key; ARGV: generation field, ticket, field, value, cache TTL. 1 stored, 0 refused.
_FILL = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if redis.call('HLEN', KEYS[1]) == 2 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
return 1
"""
# KEYS: the keys a write changes; ARGV: the write's token, marker TTL. Deletes every value and the
# generation, keeps other writes' markers, adds this write's (once).
_BLOCK = """
for _, k in ipairs(KEYS) do
  for _, f in ipairs(redis.call('HKEYS', k)) do
    if f ~= 'w' and string.sub(f, 1, 2) ~= 'w:' then redis.call('HDEL', k, f) end
  end
  if redis.call('HSETNX', k, 'w:' .. ARGV[1], 1) == 1 then redis.call('HINCRBY', k, 'w', 1) end
  redis.call('EXPIRE', k, ARGV[2])
end
return 1
"""
# KEYS: the keys; ARGV: the write's token. Lifts its marker (idempotent); deletes the key unless
# another write still blocks it.
_RELEASE = """
for _, k in ipairs(KEYS) do
  local mine = redis.call('HDEL', k, 'w:' .. ARGV[1])
  local others = tonumber(redis.call('HGET', k, 'w') or '0') - mine
  if others > 0 then redis.call('HSET', k, 'w', others) else redis.call('DEL', k) end
end
return 1
"""
# KEYS[1] epoch record; ARGV: epoch, identity. Sets "<epoch> <identity>" unless the record holds a
# newer epoch; returns the record.
_RECORD = """
local current = redis.call('GET', KEYS[1])
if current then
  local epoch = tonumber(string.match(current, '^(%d+) '))
  if epoch and epoch > tonumber(ARGV[1]) then return current end
end
local record = ARGV[1] .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], record)
return record
"""
_DB_FAILURES = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class CacheEpochs(Protocol):
    """The durable epoch (adapters/postgres/cache_epoch.py)."""

    async def current(self) -> int: ...
    async def advance(self, past: int) -> int: ...


class NotTrusted(Exception):
    """This Redis cannot be trusted as the cache (a replica)."""


def _parse_record(record: object) -> tuple[int, str] | None:
    if not isinstance(record, bytes):
        return None
    epoch, _, identity = record.decode().partition(" ")
    return (int(epoch), identity) if epoch.isdigit() and identity else None


def _info(reply: object) -> dict[str, str]:
    assert isinstance(reply, bytes)
    pairs = (line.partition(":") for line in reply.decode().splitlines() if ":" in line)
    return {k: v.strip() for k, _, v in pairs}


class RedisViewCache:
    def __init__(
        self,
        pipe: RedisPipe,
        breaker: RedisBreaker,
        epochs: CacheEpochs,
        ttl_s: int,
        *,
        lease_s: float = 1.0,
        block_ttl_s: int = MARKER_TTL_S,
        max_pending: int = 10_000,
    ) -> None:
        self._pipe = pipe
        self._breaker = breaker
        self._epochs = epochs
        self._ttl_s = ttl_s
        self._lease_s = lease_s
        self._block_ttl_s = block_ttl_s
        self._max_pending = max_pending
        self._lookup = pipe.script(_LOOKUP)
        self._fill = pipe.script(_FILL)
        self._block = pipe.script(_BLOCK)
        self._release = pipe.script(_RELEASE)
        self._set_record = pipe.script(_RECORD)
        # What this instance confirmed, per connection to a master (one for a single Redis):
        # the record and its key. Trusted only while it is not empty and the lease runs.
        self._confirmed: dict[int, tuple[bytes, str]] = {}
        self._epoch = b""
        self._lease_until = 0.0
        self._wake = asyncio.Event()
        # Fill blocks to lift (token -> keys) whose release did not reach Redis; they expire anyway.
        self._pending: dict[str, list[str]] = {}
        metrics.CACHE_TRUSTED.set(0)

    @property
    def trusted(self) -> bool:
        return bool(self._confirmed) and time.monotonic() < self._lease_until

    @property
    def pending(self) -> int:
        return sum(len(names) for names in self._pending.values())

    def _distrust(self) -> None:
        if self._confirmed:
            self._confirmed = {}
            metrics.CACHE_TRUSTED.set(0)
        self._wake.set()

    async def lookup(self, key: ViewKey) -> CachedView:
        if not self._confirmed or not self._breaker.allows():
            return CachedView()
        name, slot = redis_keys.view_slot(key)
        number, _ = self._pipe.route(name)
        confirmed = self._confirmed.get(number)
        if confirmed is None:  # another connection (or master) than the ones confirmed
            self._distrust()
            return CachedView()
        record, record_key = confirmed
        try:
            found = await self._lookup(
                keys=[name],
                args=[
                    slot,
                    redis_keys.GENERATION,
                    unique_token(),
                    redis_keys.TICKET_TTL_S,
                    self._epoch,
                    record,
                    record_key,
                ],
                on=number,
            )
        except ConnectionChanged:  # e.g. the rate limit reconnected: confirm the new connection
            self._distrust()
            return CachedView()
        except REDIS_FAILURES as exc:
            self._distrust()
            self._breaker.failed("lookup", exc)
            return CachedView()
        self._breaker.succeeded()
        assert isinstance(found, list)
        if time.monotonic() >= self._lease_until:  # the reply may predate nothing we confirmed
            return CachedView()
        if found[0] is not None:
            return CachedView(value=found[0])
        if found[1] is not None:
            return CachedView(ticket=found[1].decode())
        if found[2]:
            self._distrust()  # the record moved on: confirm the newer epoch
        return CachedView()

    async def fill(self, key: ViewKey, ticket: str, value: bytes, ttl_s: int | None = None) -> bool:
        if not self._confirmed or not self._breaker.allows():
            return False
        name, slot = redis_keys.view_slot(key)
        number, _ = self._pipe.route(name)
        if number not in self._confirmed:
            self._distrust()
            return False
        try:
            stored = await self._fill(
                keys=[name],
                args=[redis_keys.GENERATION, ticket, slot, value, self._ttl_s if ttl_s is None else ttl_s],
                on=number,
            )
        except ConnectionChanged:
            self._distrust()
            return False
        except REDIS_FAILURES as exc:
            self._distrust()
            self._breaker.failed("fill", exc)
            return False
        if not stored:
            metrics.CACHE_FILLS_REJECTED.inc()
        return bool(stored)

    async def tiers_changing(
        self, merchant_id: UUID, tier_ids: Sequence[str], bump_cache_epoch: EpochBump
    ) -> AfterCommit:
        """In the write's transaction, before COMMIT: block the keys' fills, or else advance the
        durable epoch in this transaction. The step returned lifts the block after the commit and,
        after an advance, waits the lease out before the write is acknowledged."""
        names = redis_keys.invalidated_by(merchant_id, tier_ids)
        token = unique_token()
        blocked = False
        if self._breaker.allows():
            try:
                await self._block(keys=names, args=[token, self._block_ttl_s])
                blocked = True
            except REDIS_FAILURES as exc:
                self._distrust()
                self._breaker.failed("invalidate", exc)
        if not blocked:
            await bump_cache_epoch()  # raises Unavailable if PostgreSQL fails: the write fails too

        async def after_commit() -> None:
            await self._lift(token, names)
            if not blocked:
                metrics.CACHE_EPOCH_ADVANCES.labels("write").inc()
                # Every instance's lease taken before the commit has run out by then.
                await asyncio.sleep(self._lease_s * 1.1)

        return after_commit

    async def _lift(self, token: str, names: list[str]) -> None:
        if self._breaker.allows():
            try:
                await self._release(keys=names, args=[token])
            except REDIS_FAILURES as exc:
                self._distrust()
                self._breaker.failed("invalidate", exc)
            else:
                return
        if self.pending < self._max_pending:  # else the block expires on its own
            self._pending[token] = names
        metrics.CACHE_PENDING_INVALIDATIONS.set(self.pending)

    async def deliver(self) -> bool:
        """Lifts the fill blocks whose release failed; True when none is left."""
        while self._pending and self._breaker.allows():
            token, names = next(iter(self._pending.items()))
            try:
                await self._release(keys=names, args=[token])
            except REDIS_FAILURES as exc:
                self._distrust()
                self._breaker.failed("invalidate", exc)
                break
            del self._pending[token]
        metrics.CACHE_PENDING_INVALIDATIONS.set(self.pending)
        return not self._pending

    async def confirm(self) -> bool:
        """Confirms the epoch with PostgreSQL on the Redis the lookups will use (see 4 and 5 above);
        True when the cache is trusted afterwards."""
        for _ in range(3):
            started = time.monotonic()
            if self._confirmed and self._pipe.connection_numbers == frozenset(self._confirmed):
                epoch = await self._epochs.current()  # the usual refresh: one row
                if str(epoch).encode() == self._epoch:
                    self._lease_until = started + self._lease_s
                    return True
            if await self._confirm_on_redis(started):
                return True
        return False

    async def _confirm_on_redis(self, started: float) -> bool:
        seen: dict[int, tuple[str, str, tuple[int, str] | None]] = {}  # number -> record key, identity, record
        for number, tag in await self._pipe.masters():
            server = _info(await self._pipe.execute_on(number, "INFO", "server"))
            replication = _info(await self._pipe.execute_on(number, "INFO", "replication"))
            if replication.get("role") != "master":
                raise NotTrusted(f"redis is a {replication.get('role')}")
            if not server.get("run_id") or not replication.get("master_replid"):
                raise NotTrusted("redis does not say its run_id and master_replid")
            identity = f"{server['run_id']}:{replication['master_replid']}"
            record_key = redis_keys.cache_epoch(tag)
            seen[number] = (record_key, identity, _parse_record(await self._pipe.execute_on(number, "GET", record_key)))
        epoch = await self._epochs.current()
        if any(record is None or record[1] != identity or record[0] > epoch for _, identity, record in seen.values()):
            # A Redis (in a cluster: a master) that may have lost deletions (restarted, failed
            # over, record gone): nothing in any of them from before is trusted from now on.
            epoch = await self._epochs.advance(max((r[0] for _, _, r in seen.values() if r), default=0))
            metrics.CACHE_EPOCH_ADVANCES.labels("redis_replaced").inc()
            log.info("cache epoch advanced for a redis not confirmed before", epoch=epoch)
        confirmed: dict[int, tuple[bytes, str]] = {}
        for number, (record_key, identity, _) in seen.items():
            record = await self._set_record(keys=[record_key], args=[epoch, identity], on=number)
            if record != f"{epoch} {identity}".encode():
                return False  # another instance confirmed a newer epoch meanwhile: again
            assert isinstance(record, bytes)
            confirmed[number] = (record, record_key)
        self._epoch = str(epoch).encode()
        self._lease_until = started + self._lease_s
        if not self._confirmed:
            metrics.CACHE_TRUSTED.set(1)
            log.info("redis cache confirmed", epoch=epoch, masters=len(confirmed))
        self._confirmed = confirmed
        return True

    async def keep_confirmed(self) -> None:
        """Background task: refreshes the lease every third of it, confirms again at once after a
        failure (within the breaker's cool-down), and lifts pending fill blocks."""
        quiet = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._lease_s / 3)
            self._wake.clear()
            if not self._breaker.allows():
                continue
            try:
                if not await self.confirm():
                    self._distrust()
                    continue
                self._breaker.succeeded()
                quiet = False
                if self._pending:
                    delivered = await self.deliver()
                    metrics.CACHE_INVALIDATION_RETRIES.labels("ok" if delivered else "failed").inc()
            except REDIS_FAILURES as exc:
                self._distrust()
                self._breaker.failed("confirm", exc)
            except (NotTrusted, *_DB_FAILURES) as exc:
                self._distrust()
                if not quiet:  # once per episode
                    log.warning("redis cache not trusted; lookups read PostgreSQL", error=type(exc).__name__)
                    quiet = True
                await asyncio.sleep(min(self._lease_s, 1.0))
            except Exception:  # a bug must not end the task (the cache would stay bypassed)
                self._distrust()
                log.exception("redis cache confirmation failed")
                await asyncio.sleep(min(self._lease_s, 1.0))
