"""Calls leave nothing behind: no upstream connections, no tasks, no file descriptors."""

from __future__ import annotations

import functools
import gc
import itertools

import grpc
import pytest

from providers.limits import DEFAULT_LIMITS
from tests.fakes.coze import FakeCoze
from tests.fakes.resources import ResourceSnapshot, established_to, settled
from tests.fakes.upstreams import (
    PROVIDERS,
    Fault,
    Gateway,
    Upstream,
    collect,
    open_upstream,
    run_bounded,
    serving,
    until,
)

CANCELLED_STREAMS = 1_000
CONCURRENCY = 50
FAILED_STREAMS = 10
#: Descriptors the process may gain for reasons of its own (grpc's and asyncio's internals).
FD_TOLERANCE = 10


async def test_a_thousand_cancelled_streams_leave_no_connections_tasks_or_descriptors() -> None:
    async with open_upstream("coze") as coze, open_upstream("openai") as openai:
        upstreams = (coze, openai)
        for upstream in upstreams:
            upstream.server.slow_interval = 60.0  # the slow scenario: one delta, then a long wait
        async with serving(*((upstream.service(), DEFAULT_LIMITS) for upstream in upstreams)) as gateway:
            plan = [(upstream, fault) for upstream in upstreams for fault in (Fault.STALL, Fault.SLOW)]
            # A first round brings pools, caches and grpc to their steady state before counting.
            await _cancel_streams(gateway, plan, CONCURRENCY)
            await _coze_chats_cancelled(coze)
            await settled(upstreams, ResourceSnapshot.take(upstreams))
            before = ResourceSnapshot.take(upstreams)

            await _cancel_streams(gateway, plan, CANCELLED_STREAMS)
            await _coze_chats_cancelled(coze)
            await settled(upstreams, before)
            after = ResourceSnapshot.take(upstreams)

    total = CONCURRENCY + CANCELLED_STREAMS
    assert len(coze.server.disconnects) + len(openai.server.disconnects) == total, "every upstream saw its cancel"
    assert coze.server.open_streams == openai.server.open_streams == 0
    # A cancelled stream's connection is closed, never pooled: nothing is left to the OpenAI fake.
    assert after.connections["openai"] == 0
    # To Coze, only the pool's idle keep-alive connections of the /v3/chat/cancel calls remain, at
    # most one per concurrent cancel; a leaked stream would hold one more per stream, i.e. hundreds.
    assert after.connections["coze"] <= CONCURRENCY
    assert after.grown_tasks(before) == {}, "tasks left behind"
    assert after.descriptors_besides_pool <= before.descriptors_besides_pool + FD_TOLERANCE


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streams_that_fail_part_way_leave_no_connection_open(provider: str) -> None:
    # A stream ended by an error event leaves its response unfinished; the provider must close it
    # (providers/http.py's upstream_call, or aiohttp's async with). Without that, each such stream
    # keeps a connection until a garbage collection happens to find it, so none may run here.
    # A Coze chat ended by an error event is also cancelled at Coze, in the background, on a pooled
    # connection of its own: each call waits until its cancel was answered, so the calls stay one
    # after another (the cancel's connection may not be back in the pool yet: one more at most).
    cancels_too = provider == "coze"
    async with open_upstream(provider) as upstream, serving((upstream.service(), DEFAULT_LIMITS)) as gateway:
        gc.disable()
        try:
            for sent in range(1, FAILED_STREAMS + 1):
                _, error = await collect(gateway.stub.StreamChat(upstream.stream_request(Fault.ERROR_EVENT)))
                assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
                if isinstance(upstream.fake, FakeCoze):
                    await until(functools.partial(_cancelled, upstream.fake, sent))
            await until(lambda: upstream.server.open_streams == 0)
            # One after another, the calls need one pooled connection at the most (and the cancels one more).
            assert established_to(upstream.port) <= (2 if cancels_too else 1)
        finally:
            gc.enable()


def _cancelled(fake: FakeCoze, count: int) -> bool:
    return len(fake.cancelled_chats) >= count


async def _cancel_streams(gateway: Gateway, plan: list[tuple[Upstream, Fault]], count: int) -> None:
    """Open ``count`` streams, round-robin over ``plan``, each cancelled after its first chunk."""

    async def one(upstream: Upstream, fault: Fault) -> None:
        call = gateway.stub.StreamChat(upstream.stream_request(fault))
        first = await call.read()
        assert first is not grpc.aio.EOF and first.delta == upstream.answer_pieces[0]
        call.cancel()
        assert await call.code() == grpc.StatusCode.CANCELLED

    plan_of_count = itertools.islice(itertools.cycle(plan), count)
    await run_bounded((functools.partial(one, upstream, fault) for upstream, fault in plan_of_count), CONCURRENCY)


async def _coze_chats_cancelled(coze: Upstream) -> None:
    """Every chat the callers abandoned was also cancelled at Coze (the gateway does it in the background)."""
    await coze.server.wait_for_requests("/v3/chat/cancel", count=len(coze.chat_requests()), timeout=10.0)
