"""Limits shared across replicas through a real Redis, and what happens when Redis goes away.

Two gateway processes behind one redis-server hold one key's token budget to within one call;
with Redis stopped mid-test a gateway refuses (UNAVAILABLE, LIMITS_UNAVAILABLE) or admits
(AIP_REDIS_FAIL_OPEN=true) the calls that need a limit check, and recovers by itself once
Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from server.callers import KeyEntry
from server.settings import Settings
from server.usage import estimate_tokens
from tests.gateway_process import GatewayProcess, gateway_env, running_gateway
from tests.harness import gateway_for, make_settings
from tests.redis_server import RedisServer
from tests.test_callers import details

KEY = "aip_shared-budget-key-0123456789abcdefghij"
WORDS = "one two three"
#: What an echo call of WORDS reports (three words in, three out), and what it reserves.
USED = 6
RESERVED_OUTPUT = 20
RESERVED = estimate_tokens(WORDS) + 4 + RESERVED_OUTPUT
BUDGET = 100
METADATA = (("authorization", f"Bearer {KEY}"),)


def chat() -> pb.ChatRequest:
    return pb.ChatRequest(service_name="echo", messages=[pb.ChatMessage(role="user", content=WORDS)])


async def outcome(stub: pb_grpc.AIPlatformServiceStub, request: pb.ChatRequest) -> grpc.StatusCode:
    try:
        await stub.Chat(request, metadata=METADATA)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert details(error)["ErrorInfo"].reason == "TOKEN_QUOTA_EXCEEDED"
        return error.code()
    return grpc.StatusCode.OK


@contextlib.asynccontextmanager
async def replica(tmp_path: Path, redis_url: str, name: str) -> AsyncIterator[GatewayProcess]:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[keys.team]\nsha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"\n'
        f'services = ["echo"]\ntokens_per_minute = {BUDGET}\n'
    )
    env = gateway_env(AIP_CONFIG=str(config), AIP_REDIS_URL=redis_url, AIP_RESERVED_OUTPUT_TOKENS=str(RESERVED_OUTPUT))
    async with running_gateway(env, tmp_path) as process:
        yield process


async def test_two_replicas_hold_one_token_budget_to_within_one_call(tmp_path: Path, redis_server: RedisServer) -> None:
    assert USED < RESERVED < BUDGET
    async with (
        replica(tmp_path, redis_server.url, "first") as first,
        replica(tmp_path, redis_server.url, "second") as second,
    ):
        admitted = 0
        for turn in range(2 * BUDGET // USED):  # alternate until refused, and a little past
            code = await outcome((first, second)[turn % 2].stub, chat())
            if code != grpc.StatusCode.OK:
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                break
            admitted += 1
            await asyncio.sleep(0.02)  # each settlement lands before the next admission
        else:
            pytest.fail("the shared budget never refused a call")
        # Neither replica admits another call now: the budget is one, in Redis.
        assert await outcome(first.stub, chat()) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await outcome(second.stub, chat()) == grpc.StatusCode.RESOURCE_EXHAUSTED
    used = admitted * USED
    # Within one call: what was used fits the budget, and one more reservation would not.
    assert used <= BUDGET < used + RESERVED
    # Each replica alone would have admitted this many: the budget was not kept per replica.
    assert admitted > (BUDGET - RESERVED) // USED // 2 + 1


async def test_concurrent_calls_on_two_replicas_never_overrun_the_budget(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        replica(tmp_path, redis_server.url, "first") as first,
        replica(tmp_path, redis_server.url, "second") as second,
    ):
        codes = await asyncio.gather(*(outcome((first, second)[turn % 2].stub, chat()) for turn in range(60)))
    admitted = codes.count(grpc.StatusCode.OK)
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # Every admission found room for its reservation beside the others' (reserved or settled).
    assert admitted >= BUDGET // RESERVED and admitted * USED <= BUDGET


def _keyed_settings(redis_url: str, **gateway: object) -> Settings:
    return make_settings(
        None,
        caller_keys={
            "team": KeyEntry(sha256=hashlib.sha256(KEY.encode()).hexdigest(), services=["*"], requests_per_minute=1000)
        },
        redis_url=redis_url,
        **gateway,
    )


async def _until_ok(stub: pb_grpc.AIPlatformServiceStub, seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while await outcome(stub, chat()) != grpc.StatusCode.OK:
        assert loop.time() < deadline, "the gateway did not recover when Redis came back"
        await asyncio.sleep(0.1)


async def test_with_redis_down_calls_fail_closed_and_recover_when_it_returns(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway_for(_keyed_settings(redis_server.url)) as gateway:
        assert await outcome(gateway.stub, chat()) == grpc.StatusCode.OK
        await redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="server.limits"):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await gateway.stub.Chat(chat(), metadata=METADATA)
            # Calls that need no limit check go on.
            await gateway.stub.ListServices(pb.ListServicesRequest(), metadata=METADATA)
            await redis_server.start()
            await _until_ok(gateway.stub)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details(refused.value)["ErrorInfo"].reason == "LIMITS_UNAVAILABLE"
    assert "RetryInfo" in details(refused.value)
    warnings = [record.getMessage() for record in caplog.records]
    assert any("unreachable" in line and "refused (UNAVAILABLE)" in line for line in warnings), warnings
    assert any("reachable again" in line for line in warnings), warnings


async def test_with_redis_down_and_fail_open_calls_are_admitted_and_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _keyed_settings(redis_server.url, redis_fail_open=True)
    async with gateway_for(settings) as gateway:
        await redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="server.limits"):
            for _ in range(3):
                assert await outcome(gateway.stub, chat()) == grpc.StatusCode.OK
            await redis_server.start()
            deadline = asyncio.get_running_loop().time() + 10
            while not any("reachable again" in record.getMessage() for record in caplog.records):
                assert asyncio.get_running_loop().time() < deadline, "the gateway did not go back to Redis"
                assert await outcome(gateway.stub, chat()) == grpc.StatusCode.OK
                await asyncio.sleep(0.1)
    warnings = [record.getMessage() for record in caplog.records]
    assert sum("admitted without limits" in line for line in warnings) == 1, warnings  # once per outage
