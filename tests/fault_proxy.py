"""A fault-injecting TCP proxy on loopback for tests: pass through, delay every chunk, blackhole or refuse.

The service connects to the proxy instead of its dependency (e.g. CAMPAIGN_DB_DSN points at
`proxy.port`), and the test changes the proxy's mode while traffic flows:

  heal()          forward everything at once (the default)
  delay(s)        forward each chunk `s` seconds after it was read, in order (latency, not loss)
  blackhole()     read and drop everything in both directions; connections stay open and silent,
                  new ones are accepted and get nothing (a cut where packets vanish)
  refuse()        close every open connection and every new one at once (a cut with resets)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    accepted: int = 0
    open: int = 0
    max_open: int = 0
    dropped_bytes: int = 0


@dataclass(eq=False)  # identity: links live in a set
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()  # RST now, not a graceful FIN after buffered data
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._delay_s = 0.0
        self._mode = "pass"
        self.stats = ProxyStats()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        for link in list(self._links):
            link.close()
        self._links.clear()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def heal(self) -> None:
        self._mode, self._delay_s = "pass", 0.0

    def delay(self, seconds: float) -> None:
        self._mode, self._delay_s = "pass", seconds

    def blackhole(self) -> None:
        self._mode = "blackhole"

    def refuse(self) -> None:
        self._mode = "refuse"
        for link in list(self._links):
            link.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self._mode == "refuse":
            writer.transport.abort()
            return
        link = _Link(writer)
        self._links.add(link)
        self.stats.open = len(self._links)
        self.stats.max_open = max(self.stats.max_open, self.stats.open)
        try:
            if self._mode == "blackhole":
                # Nothing reaches the upstream; hold the connection (reading and dropping) until healed.
                while self._mode == "blackhole":
                    data = await reader.read(_CHUNK)
                    if not data:
                        return
                    self.stats.dropped_bytes += len(data)
                if self._mode == "refuse":
                    return
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            link.upstream = up_writer
            link.tasks = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        finally:
            link.close()
            self._links.discard(link)
            self.stats.open = len(self._links)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copies one direction; chunks are held back while delayed and dropped while blackholed."""
        due: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

        async def send() -> None:
            while True:
                at, data = await due.get()
                if (wait := at - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                if data is None:  # the peer closed and everything before it went out
                    return
                if self._mode == "blackhole":
                    self.stats.dropped_bytes += len(data)
                    continue
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(_CHUNK):
                if self._mode == "blackhole":
                    self.stats.dropped_bytes += len(data)
                    continue
                due.put_nowait((time.monotonic() + self._delay_s, data))
            due.put_nowait((time.monotonic() + self._delay_s, None))
            await sender
        except OSError:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(OSError):
                writer.close()
