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
from collections.abc import Sequence
from typing import Any, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float
Reply = object


class ConnectionChanged(RedisConnectionError):
    """execute_on: the connection asked for is closed or was replaced (nothing was sent)."""


class _Connection(asyncio.Protocol):
    def __init__(self, timeout_s: float, number: int) -> None:
        self.number = number
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
                    waiter.set_exception(NoScriptError(str(reply)) if str(reply).startswith("NOSCRIPT") else reply)
                else:
                    waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"redis connection lost: {exc or 'closed by the server'}"))

    def _fail(self, exc: Exception) -> None:
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
                return await pipe.execute("EVALSHA", self._sha, len(keys), *keys, *args)
            return await pipe.execute_on(on, "EVALSHA", self._sha, len(keys), *keys, *args)
        except NoScriptError:
            if on is None:
                return await pipe.execute("EVAL", self._source, len(keys), *keys, *args)
            return await pipe.execute_on(on, "EVAL", self._source, len(keys), *keys, *args)


class RedisPipe:
    def __init__(self, host: str, port: int, *, db: int, password: str | None, timeout_s: float) -> None:
        self._host = host
        self._port = port
        self._db = db
        self._password = password
        self._timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._opened = 0  # connections opened so far: the number of the newest one

    def script(self, source: str) -> Script:
        return Script(self, source)

    async def execute(self, *args: Arg) -> Reply:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        return await connection.send(_command(*args))

    async def execute_on(self, number: int, *args: Arg) -> Reply:
        """Like execute, but only on connection `number`: ConnectionError if that one is closed
        or was replaced (never connects)."""
        connection = self._connection
        if connection is None or connection.closed or connection.number != number:
            raise ConnectionChanged("redis connection changed")
        return await connection.send(_command(*args))

    @property
    def connection_number(self) -> int:
        """The number of the open connection; 0 when there is none."""
        connection = self._connection
        return 0 if connection is None or connection.closed else connection.number

    async def _connect(self) -> _Connection:
        # Concurrent callers share one attempt; shielded, so a cancelled caller does not abort it.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        self._opened += 1
        number = self._opened
        try:
            async with asyncio.timeout(self._timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._timeout_s, number), self._host, self._port
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
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"connecting to redis took over {self._timeout_s:.3f} s") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"cannot connect to redis: {exc}") from exc
            raise
        self._connection = connection
        return connection

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _command(*args: Arg) -> bytes:
    # hiredis's stub types the argument as a 1-tuple; it takes any number of arguments.
    return bytes(hiredis.pack_command(cast(Any, args)))


def _retrieve(attempt: asyncio.Future[_Connection]) -> None:
    """Marks a failed connection attempt's error as seen: every waiting caller got it already."""
    if not attempt.cancelled():
        attempt.exception()
