"""Upstream faults end to end: safe retries, timeouts, a slow upstream, load shedding, cancellation latency.

Each test runs against both fake upstreams (Coze and OpenAI-compatible) through a real gateway whose
service has limits chosen by the test, and asserts at both ends: what the caller received and
what the upstream saw (requests, disconnects).

Faults tested elsewhere: status and details of each upstream error and of streams cut part-way
(tests/test_coze_chat.py, tests/test_openai_chat.py, tests/test_coze_workflow.py), connection
refused (``test_unreachable_*``), split UTF-8 characters, malformed events, the caller's deadline
and graceful shutdown (tests/test_shutdown.py, tests/test_server_process.py); the guard alone in
tests/test_call_guard.py.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from providers.guard import Backoff
from providers.limits import DEFAULT_LIMITS, ServiceLimits
from tests.conftest import error_details
from tests.fakes.upstreams import PROVIDERS, Fault, Gateway, Upstream, answer, collect, open_upstream, serving, until

#: Backoffs short enough for tests; the limits (3 attempts) stay as in production.
QUICK_BACKOFF = Backoff(initial_seconds=0.01, max_seconds=0.02)
RPCS = ("StreamChat", "Chat")

#: The bound on "at once": the time from call.cancel() to the upstream seeing its connection close.
CANCEL_LATENCY = 0.1


@pytest.fixture(params=PROVIDERS)
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    """A fake upstream of each provider in turn."""
    async with open_upstream(request.param) as started:
        yield started


async def _call(
    gateway: Gateway, upstream: Upstream, rpc: str, fault: Fault
) -> tuple[list[str], grpc.aio.AioRpcError | None]:
    """The text the caller received (a stream's deltas, or a whole answer as one piece) and the error."""
    if rpc == "StreamChat":
        responses, error = await collect(gateway.stub.StreamChat(upstream.stream_request(fault)))
        return [response.delta for response in responses if response.delta], error
    response, error = await answer(gateway.stub.Chat(upstream.chat_request(fault)))
    return ([response.content] if response is not None else []), error


def _reason(error: grpc.aio.AioRpcError) -> str:
    return str(error_details(error)["ErrorInfo"].reason)  # type: ignore[attr-defined]


# --- retries, only where safe ---------------------------------------------------------------------


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_transient_failure_before_the_first_chunk_is_retried(upstream: Upstream, rpc: str) -> None:
    async with serving((upstream.service(), DEFAULT_LIMITS, QUICK_BACKOFF)) as gateway:
        text, error = await _call(gateway, upstream, rpc, Fault.FLAKY)

    assert error is None, "one 502, then an answer: the retry must succeed"
    assert "".join(text) == "".join(upstream.answer_pieces)
    assert len(upstream.chat_requests()) == 2


@pytest.mark.parametrize("rpc", RPCS)
async def test_with_one_attempt_a_transient_failure_is_reported(upstream: Upstream, rpc: str) -> None:
    async with serving((upstream.service(), ServiceLimits(max_attempts=1))) as gateway:
        text, error = await _call(gateway, upstream, rpc, Fault.FLAKY)

    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert text == []
    assert len(upstream.chat_requests()) == 1


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_rate_limit_with_a_short_retry_after_is_retried_after_that_wait(upstream: Upstream, rpc: str) -> None:
    async with serving((upstream.service(), DEFAULT_LIMITS, QUICK_BACKOFF)) as gateway:
        text, error = await _call(gateway, upstream, rpc, Fault.RATE_LIMITED_ONCE)

    assert error is None
    assert "".join(text) == "".join(upstream.answer_pieces)
    first, second = upstream.chat_requests()
    # The wait is the upstream's Retry-After, not the (much shorter) backoff of QUICK_BACKOFF.
    assert second.time - first.time >= 0.9 * upstream.short_retry_after


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_rate_limit_without_retry_after_is_not_retried(upstream: Upstream, rpc: str) -> None:
    async with serving((upstream.service(), DEFAULT_LIMITS, QUICK_BACKOFF)) as gateway:
        _, error = await _call(gateway, upstream, rpc, Fault.RATE_LIMITED_NO_RETRY_AFTER)

    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _reason(error) == "UPSTREAM_RATE_LIMITED"
    assert "RetryInfo" not in error_details(error)
    assert len(upstream.chat_requests()) == 1


@pytest.mark.parametrize(
    ("fault", "credential", "code", "reason"),
    [
        (Fault.BAD_REQUEST, None, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST"),
        (Fault.NORMAL, "wrong-key-0123456789", grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_AUTH_FAILED"),
    ],
    ids=["4xx", "auth"],
)
@pytest.mark.parametrize("rpc", RPCS)
async def test_failures_retrying_cannot_fix_are_never_retried(
    upstream: Upstream, rpc: str, fault: Fault, credential: str | None, code: grpc.StatusCode, reason: str
) -> None:
    async with serving((upstream.service(credential=credential), DEFAULT_LIMITS, QUICK_BACKOFF)) as gateway:
        _, error = await _call(gateway, upstream, rpc, fault)

    assert error is not None and error.code() == code
    assert _reason(error) == reason
    assert len(upstream.chat_requests()) == 1


async def test_a_stream_cut_after_its_first_chunks_is_never_retried(upstream: Upstream) -> None:
    async with serving((upstream.service(), DEFAULT_LIMITS, QUICK_BACKOFF)) as gateway:
        deltas, error = await _call(gateway, upstream, "StreamChat", Fault.CUT)

    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert deltas == upstream.answer_pieces[:2], "a retry would have sent these pieces again"
    assert len(upstream.chat_requests()) == 1


# --- timeouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "limits", "limit"),
    [
        (Fault.STALL_AT_START, ServiceLimits(first_token_timeout_seconds=0.3), 0.3),
        (Fault.STALL, ServiceLimits(idle_timeout_seconds=0.3), 0.3),
        (Fault.SLOW, ServiceLimits(total_timeout_seconds=0.5), 0.5),
    ],
    ids=["first-token", "idle", "total"],
)
async def test_a_timeout_ends_the_stream_unavailable_after_its_chunks_and_closes_the_upstream(
    upstream: Upstream, fault: Fault, limits: ServiceLimits, limit: float
) -> None:
    upstream.server.slow_interval = 0.2
    async with serving((upstream.service(), limits)) as gateway:
        started = time.monotonic()
        # The caller's deadline is far off: a missing timeout would end DEADLINE_EXCEEDED, not hang.
        responses, error = await collect(gateway.stub.StreamChat(upstream.stream_request(fault), timeout=5))
        elapsed = time.monotonic() - started
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
        disconnect = await upstream.server.wait_for_disconnect()

    deltas = [response.delta for response in responses]
    assert _reason(error) == "UPSTREAM_TIMEOUT"
    expected = {Fault.STALL_AT_START: 0, Fault.STALL: 2}.get(fault)
    if expected is None:  # the slow stream: whatever arrived before the limit, and not all of it
        assert 0 < len(deltas) < len(upstream.answer_pieces)
    else:
        assert len(deltas) == expected
    assert deltas == upstream.answer_pieces[: len(deltas)], "the chunks already received came first, in order"
    assert limit <= elapsed < limit + 1.5
    assert disconnect.scenario == upstream.scenario(fault)
    assert len(upstream.chat_requests()) == 1, "a timeout is not retried"


# --- a slow upstream ------------------------------------------------------------------------------


async def test_a_slow_upstream_streams_each_token_as_it_comes(upstream: Upstream) -> None:
    interval = upstream.server.slow_interval = 0.2
    async with serving((upstream.service(), DEFAULT_LIMITS)) as gateway:
        call = gateway.stub.StreamChat(upstream.stream_request(Fault.SLOW))
        deltas: list[str] = []
        arrivals: list[float] = []
        async for response in call:
            if response.delta:
                deltas.append(response.delta)
                arrivals.append(time.monotonic())
        assert await call.code() == grpc.StatusCode.OK

    assert deltas == upstream.answer_pieces
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Batched at the end, the gaps would be ~0; relayed as they come, each is about one interval.
    assert all(gap >= interval / 2 for gap in gaps), gaps


# --- load shedding --------------------------------------------------------------------------------


async def test_a_full_service_refuses_at_once_and_accepts_again_when_a_call_ends(upstream: Upstream) -> None:
    service = upstream.service()
    async with serving((service, ServiceLimits(max_concurrent_calls=2))) as gateway:
        stalled = [gateway.stub.StreamChat(upstream.stream_request(Fault.STALL)) for _ in range(2)]
        for call in stalled:
            assert (await call.read()).delta == upstream.answer_pieces[0]

        started = time.monotonic()
        responses, error = await collect(gateway.stub.StreamChat(upstream.stream_request(), timeout=5))
        assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _reason(error) == "OVERLOADED"
        assert time.monotonic() - started < 1.0, "refused at once, not queued"
        assert responses == []
        assert len(upstream.chat_requests()) == 2, "the refused call never reached the upstream"

        stalled[0].cancel()
        guard = gateway.registry.guard(service)
        await until(lambda: guard.running == 1)
        responses, error = await collect(gateway.stub.StreamChat(upstream.stream_request()))
        assert error is None
        assert "".join(response.delta for response in responses) == "".join(upstream.answer_pieces)
        stalled[1].cancel()


# --- cancellation ---------------------------------------------------------------------------------


async def test_a_cancelled_stream_closes_its_upstream_request_at_once(upstream: Upstream) -> None:
    async with serving((upstream.service(), DEFAULT_LIMITS)) as gateway:
        call = gateway.stub.StreamChat(upstream.stream_request(Fault.STALL))
        assert (await call.read()).delta == upstream.answer_pieces[0]

        cancelled_at = time.monotonic()
        call.cancel()
        disconnect = await upstream.server.wait_for_disconnect()

    latency = disconnect.time - cancelled_at
    assert disconnect.scenario == upstream.scenario(Fault.STALL)
    assert latency < CANCEL_LATENCY, f"the upstream saw the cancel after {latency * 1000:.1f} ms"


async def test_a_cancelled_unary_call_closes_its_upstream_request_at_once(upstream: Upstream) -> None:
    async with serving((upstream.service(), DEFAULT_LIMITS)) as gateway:
        call = gateway.stub.Chat(upstream.chat_request(Fault.STALL))
        await upstream.wait_for_chat_requests()
        await until(lambda: upstream.server.open_streams == 1)

        cancelled_at = time.monotonic()
        call.cancel()
        disconnect = await upstream.server.wait_for_disconnect()
        assert await call.code() == grpc.StatusCode.CANCELLED

    latency = disconnect.time - cancelled_at
    assert disconnect.scenario == upstream.scenario(Fault.STALL)
    assert latency < CANCEL_LATENCY, f"the upstream saw the cancel after {latency * 1000:.1f} ms"


# --- events the gateway does not know -------------------------------------------------------------


async def test_unknown_events_are_ignored_and_the_stream_goes_on(upstream: Upstream) -> None:
    # Coze's whole-answer path over the same scenario: test_coze_chat.py::test_only_answer_text_reaches_the_answer.
    async with serving((upstream.service(), DEFAULT_LIMITS)) as gateway:
        deltas, error = await _call(gateway, upstream, "StreamChat", Fault.UNKNOWN_EVENTS)

    assert error is None
    assert deltas == upstream.answer_pieces
