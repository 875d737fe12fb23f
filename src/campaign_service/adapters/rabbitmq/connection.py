"""One AMQP connection and confirming channel, opened on first use and again after a failure."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

log = structlog.get_logger(__name__)


class RabbitUnavailable(Exception):
    """The broker could not be reached (or the connection broke)."""


class LazyChannel:
    """A channel with publisher confirms (`on_return_raises`: an unroutable message fails its
    publish). Not aio-pika's robust reconnection: after a failure the caller drops the channel
    with `reset` and the next `get` reconnects, so nothing is published on a half-restored
    connection and every outcome is seen by the caller."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        self._url = url
        self._timeout = connect_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self.down = False  # the last attempt to connect failed, or the connection broke

    async def get(self) -> AbstractChannel:
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            await self._drop()
            try:
                connection = await aio_pika.connect(self._url, timeout=self._timeout)
            except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
                self.down = True
                raise RabbitUnavailable(f"rabbitmq unreachable: {type(exc).__name__}: {exc}"[:200]) from None
            self._connection = connection  # type: ignore[assignment]  # connect() returns a plain connection
            self._channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self.down = False
            return self._channel

    async def reset(self) -> None:
        """Drops the connection (after a failure): the next `get` reconnects."""
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # it is broken already; closing is a courtesy
                await asyncio.wait_for(connection.close(), 2.0)

    async def close(self) -> None:
        await self.reset()
