"""One Redis connection that pipelines the per-request script calls (cache lookup and fill, rate
limit) of every concurrent RPC.

redis-py's asyncio client costs ~150 µs of CPU per command here (a pooled connection taken and
given back, a timeout scope, its own parser: bench/lookup.py), more than the rest of a cached
lookup. This connection keeps every command in flight at once: calls made in one event-loop
turn leave in one write, replies come back in order and settle the callers FIFO, hiredis parses.
Other commands (invalidation, health, scans) stay on the redis-py client.

Failures surface as redis-py's exceptions, so callers and the breaker treat both alike: a reply
error as ResponseError, a lost connection as ConnectionError, and a connection whose oldest
command is unanswered after `timeout_s` is closed, failing everything on it with TimeoutError.
The next call connects again (one connect at a time, bounded by the same timeout).

Each connection has a number (1, 2, ...). `execute_on(number, ...)` sends only on that connection
and fails at once if it is gone: the read cache uses it so that nothing it trusts can come from a
connection (and so possibly a Redis) it has not confirmed (adapters/redis/cache.py).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis.crc import key_slot
from redis.exceptions import ClusterDownError as RedisClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float
Reply = object
Address = tuple[str, int]
SLOTS = 16384
# Replies of a cluster node that mean the slot map the pipe holds is no longer the cluster's.
_REDIRECTIONS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


class ConnectionChanged(RedisConnectionError):
    """execute_on: the connection asked for is closed or was replaced (nothing was sent)."""


class _Connection(asyncio.Protocol):
    def __init__(self, timeout_s: float, number: int, on_trouble: Callable[[], None]) -> None:
        self.number = number
        self._on_trouble = on_trouble  # a redirection or a lost connection: the slot map may be old
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader(replyError=ResponseError, notEnoughData=False)
        self._waiters: collections.deque[asyncio.Future[Reply]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None
        self._answered = 0  # replies received so far: the watchdog's sign of progress
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Reply]:
        if self.closed:
            raise RedisConnectionError("redis connection closed")
        waiter: asyncio.Future[Reply] = self._loop.create_future()
        self._waiters.append(waiter)
        if not self._outgoing:
            self._loop.call_soon(self._flush)
        self._outgoing.append(command)
        return waiter

    def _flush(self) -> None:
        if self.closed or self._transport is None:
            return
        self._transport.write(b"".join(self._outgoing))
        self._outgoing.clear()
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout_s, self._check, self._answered)

    def _check(self, answered_before: int) -> None:
        """Runs `timeout_s` after a write: no reply since the last check while commands wait
        means Redis stopped answering."""
        self._watchdog = None
        if not self._waiters:
            return
        if self._answered == answered_before:
            self._fail(RedisTimeoutError(f"no reply from redis in {self._timeout_s:.3f} s"))
            return
        self._watchdog = self._loop.call_later(self._timeout_s, self._check, self._answered)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            self._answered += 1
            if not self._waiters:
                self._fail(RedisConnectionError("redis sent a reply nobody asked for"))
                return
            waiter = self._waiters.popleft()
            if not waiter.done():  # the caller may have given up (cancelled)
                if isinstance(reply, ResponseError):
                    if str(reply).startswith(_REDIRECTIONS):
                        self._on_trouble()
                    waiter.set_exception(NoScriptError(str(reply)) if str(reply).startswith("NOSCRIPT") else reply)
                else:
                    waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"redis connection lost: {exc or 'closed by the server'}"))

    def _fail(self, exc: Exception) -> None:
        if not self.closed:
            self._on_trouble()
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.abort()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    def close(self) -> None:
        self._fail(RedisConnectionError("redis connection closed"))


class Script:
    """A Lua script called by its SHA1, loaded on first use (and again after a SCRIPT FLUSH or a
    restart of Redis)."""

    def __init__(self, pipe: RedisPipe, source: str) -> None:
        self._pipe = pipe
        self._source = source
        self._sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()  # Redis names scripts by SHA1

    async def __call__(self, keys: Sequence[Arg], args: Sequence[Arg], *, on: int | None = None) -> Reply:
        """Runs the script; with `on`, only on that connection (see RedisPipe.execute_on)."""
        pipe = self._pipe
        try:
            if on is None:
                return await pipe.execute("EVALSHA", self._sha, len(keys), *keys, *args, key=keys[0] if keys else None)
            return await pipe.execute_on(on, "EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            if on is None:
                return await pipe.execute("EVAL", self._source, len(keys), *keys, *args, key=keys[0] if keys else None)
            return await pipe.execute_on(on, "EVAL", self._source, len(keys), *keys, *args)


class RedisPipe:
    """The pipelined connection to one Redis, or with `cluster`, one to each master of a Redis
    Cluster: a command goes to the master of its key's slot (`key=`, scripts: their first key).

    The slot map comes from CLUSTER SLOTS. There are no hidden retries or redirections: a MOVED,
    ASK, TRYAGAIN or CLUSTERDOWN reply, or a lost connection, fails its caller like any Redis
    failure and marks the map stale; the next call reads it again (from any node known so far)."""

    def __init__(
        self, host: str, port: int, *, db: int, password: str | None, timeout_s: float, cluster: bool = False
    ) -> None:
        self._seed = (host, port)
        self._db = db
        self._password = password
        self._timeout_s = timeout_s
        self._cluster = cluster
        self._connections: dict[Address, _Connection] = {}
        self._numbered: dict[int, _Connection] = {}
        self._connecting: dict[Address, asyncio.Future[_Connection]] = {}
        self._opened = 0  # connections opened so far: the number of the newest one
        # Cluster only: the master of each slot, a hash tag that lands on each master, and every
        # node ever named (where to ask for the map when the masters are gone).
        self._slots: list[Address] = []
        self._tags: dict[Address, str] = {}
        self._known: dict[Address, None] = {self._seed: None}
        self._stale = cluster
        self._refreshing: asyncio.Future[None] | None = None

    def script(self, source: str) -> Script:
        return Script(self, source)

    async def execute(self, *args: Arg, key: Arg | None = None) -> Reply:
        """Sends on the connection of `key`'s master (any master without a key)."""
        if self._stale:
            await self._refresh()
        address = self._address(key)
        connection = self._connections.get(address)
        if connection is None or connection.closed:
            connection = await self._connect(address)
        return await connection.send(_command(*args))

    async def execute_on(self, number: int, *args: Arg) -> Reply:
        """Like execute, but only on connection `number`: ConnectionError if that one is closed
        or was replaced (never connects)."""
        connection = self._numbered.get(number)
        if connection is None or connection.closed or self._stale:
            raise ConnectionChanged("redis connection changed")
        return await connection.send(_command(*args))

    def route(self, key: Arg) -> tuple[int, str | None]:
        """The number of the open connection `key`'s command would use (0: none) and the hash tag
        of keys on the same master (None: not a cluster)."""
        if self._stale:
            return 0, None
        address = self._address(key)
        connection = self._connections.get(address)
        number = 0 if connection is None or connection.closed else connection.number
        return number, self._tags.get(address)

    @property
    def connection_numbers(self) -> frozenset[int]:
        """The numbers of the open connections to the masters; empty while the map is stale."""
        if self._stale:
            return frozenset()
        return frozenset(c.number for a, c in self._connections.items() if not c.closed and a in self._tags_or_seed())

    @property
    def connection_number(self) -> int:
        """The number of the open connection (of a single Redis); 0 when there is none."""
        return next(iter(self.connection_numbers), 0)

    async def masters(self) -> list[tuple[int, str | None]]:
        """Connects to every master; (connection number, hash tag landing on it) of each."""
        if self._stale:
            await self._refresh()
        found = []
        for address in self._tags_or_seed():
            connection = self._connections.get(address)
            if connection is None or connection.closed:
                connection = await self._connect(address)
            found.append((connection.number, self._tags.get(address)))
        return found

    def _tags_or_seed(self) -> Sequence[Address]:
        return list(self._tags) if self._cluster else [self._seed]

    def _address(self, key: Arg | None) -> Address:
        if not self._cluster:
            return self._seed
        if key is None:
            return next(iter(self._tags))
        return self._slots[key_slot(key if isinstance(key, bytes) else str(key).encode())]

    def _mark_stale(self) -> None:
        if self._cluster:
            self._stale = True

    async def _refresh(self) -> None:
        # Concurrent callers share one attempt, as they share a connect.
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._read_slots())
            self._refreshing.add_done_callback(_retrieve)
        await asyncio.shield(self._refreshing)

    async def _read_slots(self) -> None:
        failure: Exception = RedisConnectionError("no redis cluster node known")
        candidates = [*self._tags, *self._known]
        for address in dict.fromkeys(candidates):
            try:
                connection = self._connections.get(address)
                if connection is None or connection.closed:
                    connection = await self._connect(address)
                reply = await connection.send(_command("CLUSTER", "SLOTS"))
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                failure = exc
                continue
            slots = _slot_map(reply)
            if slots is None:
                failure = RedisClusterDownError("the redis cluster does not cover every slot")
                continue
            self._slots = slots
            masters = list(dict.fromkeys(slots))
            self._tags = {address: _tag_on(slots, address) for address in masters}
            self._known.update(dict.fromkeys(masters))
            for other, extra in list(self._connections.items()):
                if other not in self._tags:  # a replica now, or gone: nothing is sent there
                    extra.close()
            self._stale = False
            return
        raise failure

    async def _connect(self, address: Address) -> _Connection:
        # Concurrent callers share one attempt; shielded, so a cancelled caller does not abort it.
        attempt = self._connecting.get(address)
        if attempt is None or attempt.done():
            attempt = self._connecting[address] = asyncio.ensure_future(self._open(address))
            attempt.add_done_callback(_retrieve)
        return await asyncio.shield(attempt)

    async def _open(self, address: Address) -> _Connection:
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        self._opened += 1
        number = self._opened
        try:
            async with asyncio.timeout(self._timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._timeout_s, number, self._mark_stale), *address
                )
                setup = []
                if self._password is not None:
                    setup.append(connection.send(_command("AUTH", self._password)))
                if self._db:
                    setup.append(connection.send(_command("SELECT", self._db)))
                setup.append(connection.send(_command("CLIENT", "SETNAME", "campaign-service-pipe")))
                await asyncio.gather(*setup)
        except BaseException as exc:
            if connection is not None:
                connection.close()
            self._mark_stale()  # in a cluster: the node may be gone for good (a failover)
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"connecting to redis took over {self._timeout_s:.3f} s") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
            raise
        old = self._connections.get(address)
        if old is not None:
            self._numbered.pop(old.number, None)
        self._connections[address] = connection
        self._numbered[number] = connection
        return connection

    async def aclose(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
        self._numbered.clear()


def _slot_map(reply: Reply) -> list[Address] | None:
    """CLUSTER SLOTS -> the master of each of the 16384 slots; None if a slot has none."""
    slots: list[Address | None] = [None] * SLOTS
    if not isinstance(reply, list):
        return None
    for start, end, master, *_replicas in reply:
        address = (master[0].decode(), int(master[1]))
        slots[start : end + 1] = [address] * (end - start + 1)
    if any(a is None for a in slots):
        return None
    return cast(list[Address], slots)


def _tag_on(slots: list[Address], address: Address) -> str:
    """A short hash tag whose slot `address` serves (expected a few tries: a third of the slots)."""
    for i in itertools.count():
        if slots[key_slot(str(i).encode())] == address:
            return str(i)
    raise AssertionError("unreachable")


def _command(*args: Arg) -> bytes:
    # hiredis's stub types the argument as a 1-tuple; it takes any number of arguments.
    return bytes(hiredis.pack_command(cast(Any, args)))


def _retrieve(attempt: asyncio.Future[Any]) -> None:
    """Marks a failed connection attempt's error as seen: every waiting caller got it already."""
    if not attempt.cancelled():
        attempt.exception()
