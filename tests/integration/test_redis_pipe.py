"""The Redis connections against a real redis-server. The pipelined one of the per-request calls: answers
reach the right callers, errors stay with their caller, a hung or dead Redis fails callers within
the timeout, and the next call after a restart connects again."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from campaign_service.adapters.redis.pipe import RedisPipe
from tests.conftest import RedisServer, free_port

pytestmark = pytest.mark.redis


async def test_concurrent_calls_each_get_their_own_answer(service_pipe: Callable[..., RedisPipe]) -> None:
    pipe = service_pipe()
    answers = await asyncio.gather(*(pipe.execute("ECHO", f"call-{i}") for i in range(500)))
    assert answers == [f"call-{i}".encode() for i in range(500)]


async def test_an_error_reply_fails_only_its_caller(service_pipe: Callable[..., RedisPipe]) -> None:
    pipe = service_pipe()
    key = f"pipe-test:{time.monotonic_ns()}"
    results = await asyncio.gather(
        pipe.execute("SET", key, "a", key=key),
        pipe.execute("INCR", key, key=key),  # not an integer
        pipe.execute("GET", key, key=key),
        return_exceptions=True,
    )
    assert results[0] == b"OK"
    assert isinstance(results[1], ResponseError)
    assert results[2] == b"a"


async def test_scripts_survive_a_script_flush(
    service_pipe: Callable[..., RedisPipe], redis_client: aioredis.Redis
) -> None:
    script = service_pipe().script("return ARGV[1] .. KEYS[1]")
    assert await script(keys=["k"], args=["v"]) == b"vk"
    await redis_client.script_flush()
    assert await script(keys=["k"], args=["w"]) == b"wk"  # NOSCRIPT -> sent with its source


async def test_a_hung_redis_fails_every_waiting_call_within_the_timeout(
    own_redis: Callable[..., RedisServer], service_pipe: Callable[..., RedisPipe]
) -> None:
    server = own_redis()
    pipe = service_pipe("127.0.0.1", server.port, redis_timeout_ms=100)
    assert await pipe.execute("PING") == b"PONG"
    server.pause()
    try:
        start = time.monotonic()
        results = await asyncio.gather(*(pipe.execute("PING") for _ in range(20)), return_exceptions=True)
        elapsed = time.monotonic() - start
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert elapsed < 0.5  # at most twice the timeout, never the TCP timeout
        with pytest.raises(RedisTimeoutError):  # a new connection's set-up is bounded too
            await pipe.execute("PING")
    finally:
        server.resume()
    assert await pipe.execute("PING") == b"PONG"


async def test_a_restarted_redis_is_reconnected_on_the_next_call(
    own_redis: Callable[..., RedisServer], service_pipe: Callable[..., RedisPipe]
) -> None:
    server = own_redis()
    pipe = service_pipe("127.0.0.1", server.port, redis_timeout_ms=200)
    assert await pipe.execute("PING") == b"PONG"
    server.kill()
    with pytest.raises(RedisConnectionError):
        await pipe.execute("PING")
    server.start()
    assert await pipe.execute("PING") == b"PONG"


async def test_an_unreachable_redis_fails_fast(service_pipe: Callable[..., RedisPipe]) -> None:
    pipe = service_pipe("127.0.0.1", free_port(), redis_timeout_ms=100)
    with pytest.raises(RedisConnectionError):
        await pipe.execute("PING")


async def test_a_cancelled_caller_does_not_shift_the_answers(service_pipe: Callable[..., RedisPipe]) -> None:
    pipe = service_pipe()
    first = asyncio.ensure_future(pipe.execute("ECHO", "first"))
    second = asyncio.ensure_future(pipe.execute("ECHO", "second"))
    await asyncio.sleep(0)  # both written
    first.cancel()
    assert await second == b"second"
    assert await pipe.execute("ECHO", "third") == b"third"


async def test_the_pooled_client_takes_a_new_connection_after_a_redis_restart(
    own_redis: Callable[..., RedisServer], service_redis: Callable[..., aioredis.Redis]
) -> None:
    """The invalidation path's client: a pooled connection that a restart closed is replaced on
    its next command instead of failing it (which would open the breaker for nothing)."""
    server = own_redis()
    client = service_redis("127.0.0.1", server.port, redis_timeout_ms=200)
    assert await client.ping()
    server.kill()
    server.start()
    assert await client.unlink("some-key") == 0


async def test_each_key_goes_to_the_master_of_its_slot(service_pipe: Callable[..., RedisPipe], redis_client: aioredis.Redis) -> None:
    """In a cluster, keys of many slots (so of every master) are written through the one pipe and
    found where the cluster says they live; a script on one merchant's keys runs on one master."""
    pipe = service_pipe()
    keys = [f"pipe-test:{{{uuid.uuid4()}}}" for _ in range(60)]
    assert await asyncio.gather(*(pipe.execute("SET", k, k, "EX", 60, key=k) for k in keys)) == [b"OK"] * 60
    assert await redis_client.mget(keys[:1]) == [keys[0].encode()]
    assert [await redis_client.get(k) for k in keys] == [k.encode() for k in keys]
    script = pipe.script("return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])")
    merchant = uuid.uuid4()
    assert await script(keys=[f"a:{{{merchant}}}", f"b:{{{merchant}}}"], args=[]) == 2
    numbers = {pipe.route(k)[0] for k in keys}
    assert len(numbers) == len(await pipe.masters())  # one connection per master, all in use
