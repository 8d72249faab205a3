"""The `redis_server` fixture the rate-limit tests stand on: a real Redis that stops and starts again on its port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis.asyncio
import redis.exceptions

from tests import redis_server as redis_server_module
from tests.redis_server import RedisServer, answers_ping, running_redis


async def test_commands_fail_while_redis_is_stopped_and_work_after_it_starts_again(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        await client.set("key", "value")
        assert await client.get("key") == b"value"

        await redis_server.stop()
        assert not redis_server.running
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.get("key")

        await redis_server.start()
        assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
        # Nothing is persisted: the restarted server is empty, and the same client reconnects.
        assert await client.get("key") is None
        await client.set("key", "again")
        assert await client.get("key") == b"again"
    finally:
        await client.aclose()


async def test_redis_is_killed_at_the_end_of_the_block(tmp_path: Path) -> None:
    async with running_redis(tmp_path) as server:
        assert server.running
        assert server.process is not None
        pid, port = server.process.pid, server.port
        assert await answers_ping(port)
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not await answers_ping(port)


async def test_a_killed_redis_starts_again_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    await redis_server.kill()
    assert not await answers_ping(port)
    await redis_server.start()
    assert redis_server.port == port
    assert await answers_ping(port)


@pytest.mark.parametrize(("in_ci", "outcome"), [(False, pytest.skip.Exception), (True, pytest.fail.Exception)])
async def test_missing_redis_server_skips_locally_and_fails_in_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_ci: bool, outcome: type[BaseException]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redis_server_module, "IN_CI", in_ci)
    with pytest.raises(outcome, match=r"\.ci/setup-redis\.sh"):
        async with running_redis(tmp_path):
            raise AssertionError("started without redis-server on PATH")
