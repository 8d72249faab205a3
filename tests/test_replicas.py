"""Two gateway replicas behind the Python client's default service config: calls spread, and a stop loses none.

Every echo answer is the same whichever replica gives it, so each replica is started with a config file declaring
one extra service named after it (``replica_a`` / ``replica_b``): a ListServices answer names the replica that
served it. ListServices goes through the same channel, balancer and retry policy as every other RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients import AsyncAIPlatformClient
from tests.gateway_process import GatewayProcess, gateway_env, running_gateway

REPLICAS = ("replica_a", "replica_b")
#: Three words, 20 ms apart: the stream is still running on the replica when it is told to stop.
SLOW_ECHO = {"delay_ms": 20}
WORDS = "one two three"
#: Concurrent callers while a replica stops, and the most calls each makes (a bound, rarely reached).
CALLERS = 4
CALLS_PER_CALLER = 150


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[dict[str, GatewayProcess]]:
    """Two `python -m server` processes, each on its own free port, serving the demo services and its name."""
    async with contextlib.AsyncExitStack() as stack:
        started = await asyncio.gather(*(stack.enter_async_context(_replica(name, tmp_path)) for name in REPLICAS))
        yield dict(zip(REPLICAS, started, strict=True))


def _replica(name: str, tmp_path: Path) -> contextlib.AbstractAsyncContextManager[GatewayProcess]:
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[services.{name}]\nprovider = "echo"\n')
    env = gateway_env(AIP_CONFIG=str(config), AIP_DEMO_SERVICES="true", AIP_GRACE_SECONDS="5")
    return running_gateway(env, tmp_path)


def _both(replicas: dict[str, GatewayProcess]) -> str:
    """One target naming both replicas; the client's round_robin connects to each address."""
    return "ipv4:" + ",".join(replica.target for replica in replicas.values())


async def _which_replica(client: AsyncAIPlatformClient) -> str:
    names = {service.name for service in await client.list_services()}
    (replica,) = names.intersection(REPLICAS)
    return replica


async def _until_both_answered(client: AsyncAIPlatformClient) -> None:
    """Call until each replica has answered once: round_robin uses a connection only once it is up."""
    seen: set[str] = set()
    async with asyncio.timeout(10):
        while seen != set(REPLICAS):
            seen.add(await _which_replica(client))


async def test_round_robin_spreads_calls_over_both_replicas(replicas: dict[str, GatewayProcess]) -> None:
    async with AsyncAIPlatformClient(_both(replicas), timeout=10) as client:
        await _until_both_answered(client)
        served = Counter([await _which_replica(client) for _ in range(40)])

    # With both connections up, round_robin takes them in turn: 20 each, give or take a reconnect.
    assert set(served) == set(REPLICAS), served
    assert min(served.values()) >= 15, served


async def test_a_replica_stopped_with_sigterm_loses_no_call_while_calls_continue(
    replicas: dict[str, GatewayProcess],
) -> None:
    # What carries each call through: calls running on replica_a finish within its grace period; its GOAWAY
    # takes it out of round_robin, so new calls go to replica_b; a call that reaches replica_a in between is
    # answered before any message (UNAVAILABLE, or CANCELLED by grpc.aio, grpc/grpc#41785) and retried by the
    # service config's retry policy, and waitForReady holds calls while no connection is ready.
    stopped, survivor = replicas["replica_a"], "replica_b"
    completed, callers_left = 0, CALLERS
    progress = asyncio.Condition()  # notified after each call and when a caller ends
    finished = asyncio.Event()
    failures: list[BaseException] = []
    # Per ListServices call: the replica that answered, and whether replica_a had exited by then.
    answers: list[tuple[str, bool]] = []

    async def one_call(client: AsyncAIPlatformClient, kind: int) -> None:
        if kind == 0:
            assert await client.stream_chat("echo", [("user", WORDS)], SLOW_ECHO) == WORDS
        elif kind == 1:
            assert (await client.chat("echo", [("user", WORDS)])).content == WORDS
        else:
            replica = await _which_replica(client)
            answers.append((replica, stopped.process.returncode is not None))

    async def caller(client: AsyncAIPlatformClient, first_kind: int) -> None:
        nonlocal completed, callers_left
        try:
            # A stream, a unary chat and a ListServices in turn; bounded whatever happens to the replicas.
            for kind in itertools.islice(itertools.cycle((0, 1, 2)), first_kind, first_kind + CALLS_PER_CALLER):
                if finished.is_set():
                    return
                try:
                    await one_call(client, kind)
                except Exception as error:  # collect every failure, not only the first
                    failures.append(error)
                completed += 1
                async with progress:
                    progress.notify_all()
        finally:
            callers_left -= 1
            async with progress:
                progress.notify_all()

    async def until_completed(count: int) -> None:
        async with asyncio.timeout(15), progress:
            await progress.wait_for(lambda: completed >= count or callers_left == 0)

    async with AsyncAIPlatformClient(_both(replicas), timeout=10) as client:
        await _until_both_answered(client)
        callers = [asyncio.create_task(caller(client, index % 3)) for index in range(CALLERS)]
        try:
            await until_completed(40)
            stopped.process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.wait_for(stopped.process.wait(), 15)
            await until_completed(completed + 40)  # calls go on after the replica is gone
        finally:
            finished.set()
            await asyncio.gather(*callers)

    assert failures == []
    assert exit_code == 0
    before = Counter(replica for replica, exited in answers if not exited)
    after = Counter(replica for replica, exited in answers if exited)
    assert set(before) == set(REPLICAS), before
    assert set(after) == {survivor}, after
