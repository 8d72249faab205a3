"""Soak: many mixed calls (normal, cancelled, faulty; Coze, OpenAI-compatible, echo) at once.

Every call must end with the status its kind calls for, and afterwards nothing may be left:
no upstream connections beyond the pools' idle ones, no tasks, no descriptors, no memory growth.
The suite runs it at a CI size; run a bigger one on its own with
``AIP_SOAK_CALLS=5000 .venv/bin/python -m pytest -m soak``.
"""

from __future__ import annotations

import collections
import functools
import gc
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from providers.echo import EchoChatService, split_words
from providers.guard import Backoff
from providers.limits import DEFAULT_LIMITS
from tests.fakes.resources import ResourceSnapshot, settled
from tests.fakes.upstreams import Fault, Gateway, Upstream, answer, collect, open_upstream, run_bounded, serving

# Read at import, before conftest's autouse fixture clears the AIP_* variables of each test.
SOAK_CALLS = int(os.environ.get("AIP_SOAK_CALLS", "600"))
CONCURRENCY = 50
#: Retries as in production, with backoffs short enough for a test (5xx calls are retried).
QUICK_BACKOFF = Backoff(initial_seconds=0.005, max_seconds=0.01)
#: Memory reaches its plateau (allocator arenas, grpc's caches) only after about this many calls.
WARM_UP_CALLS = min(SOAK_CALLS, 1_000)
FD_TOLERANCE = 10
#: RSS may grow by allocator noise (under 1 MiB at the default size, measured) and by what the fakes
#: keep of each call (Coze's chat records, disconnects: ~0.7 KB a call); a gateway that kept even
#: 8 KB a call would pass the bound.
RSS_TOLERANCE = 4 * 1024 * 1024 + SOAK_CALLS * 700

ECHO_TEXT = "one two three four five"

Outcome = tuple[grpc.StatusCode, str]  # the status, and the text the caller received


@dataclass(frozen=True)
class _Kind:
    """One kind of call in the mix, and how it must end."""

    name: str
    run: Callable[[Gateway], Awaitable[Outcome]]
    status: grpc.StatusCode
    text: str  # the text the caller must have received


def _mix(coze: Upstream, openai: Upstream) -> list[_Kind]:
    ok, unavailable = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE
    kinds: list[_Kind] = []
    for upstream in (coze, openai):
        whole = "".join(upstream.answer_pieces)
        first_two = "".join(upstream.answer_pieces[:2])
        name = upstream.provider
        kinds += [
            _Kind(f"{name} stream", _stream(upstream, Fault.NORMAL), ok, whole),
            _Kind(f"{name} chat", _chat(upstream, Fault.NORMAL), ok, whole),
            _Kind(f"{name} cancelled", _cancelled(upstream, Fault.STALL), grpc.StatusCode.CANCELLED, ""),
            _Kind(f"{name} cut", _stream(upstream, Fault.CUT), unavailable, first_two),
            _Kind(f"{name} error event", _stream(upstream, Fault.ERROR_EVENT), unavailable, first_two),
            _Kind(f"{name} 5xx", _stream(upstream, Fault.SERVER_ERROR), unavailable, ""),
        ]
    kinds += [
        _Kind("echo stream", _echo_stream, ok, ECHO_TEXT),
        _Kind("echo chat", _echo_chat, ok, ECHO_TEXT),
        _Kind("echo cancelled", _echo_cancelled, grpc.StatusCode.CANCELLED, ""),
    ]
    return kinds


@pytest.mark.soak
async def test_mixed_calls_end_as_expected_and_leave_nothing_behind(caplog: pytest.LogCaptureFixture) -> None:
    # Each faulty call logs a warning, which the suite's log capture would keep: memory of the test's own.
    for logger in ("server", "cozepy"):
        caplog.set_level(logging.ERROR, logger=logger)
    async with open_upstream("coze") as coze, open_upstream("openai") as openai:
        upstreams = (coze, openai)
        for upstream in upstreams:
            upstream.server.keep_requests = False  # thousands of records would be the test's own growth
        services = [upstream.service() for upstream in upstreams] + [EchoChatService("echo")]
        async with serving(*((service, DEFAULT_LIMITS, QUICK_BACKOFF) for service in services)) as gateway:
            kinds = _mix(coze, openai)
            wrong: collections.Counter[str] = collections.Counter()
            await _run(gateway, kinds, WARM_UP_CALLS, wrong)
            before = await _settled_snapshot(upstreams, None)

            await _run(gateway, kinds, SOAK_CALLS, wrong)
            after = await _settled_snapshot(upstreams, before)

    assert not wrong, f"calls that ended otherwise than expected: {dict(wrong)}"
    assert coze.server.open_streams == openai.server.open_streams == 0
    # What remains are idle pooled connections: at most one per call that ran at once.
    assert all(count <= CONCURRENCY for count in after.connections.values()), after.connections
    assert after.grown_tasks(before) == {}, "tasks left behind"
    assert after.descriptors_besides_pool <= before.descriptors_besides_pool + FD_TOLERANCE
    assert after.rss_bytes - before.rss_bytes < RSS_TOLERANCE, (
        f"RSS grew by {(after.rss_bytes - before.rss_bytes) / 2**20:.1f} MiB over {SOAK_CALLS} calls"
    )


async def _settled_snapshot(upstreams: tuple[Upstream, ...], before: ResourceSnapshot | None) -> ResourceSnapshot:
    """The counts once the calls have wound down, less what the fakes still keep (disconnects, chats)."""
    await settled(upstreams, before or ResourceSnapshot.take(upstreams))
    for upstream in upstreams:
        upstream.server.forget()
    gc.collect()  # cycles (exceptions and their tracebacks) would otherwise go whenever gc next runs
    return ResourceSnapshot.take(upstreams)


async def _run(gateway: Gateway, kinds: list[_Kind], count: int, wrong: collections.Counter[str]) -> None:
    """``count`` calls cycling through ``kinds``, CONCURRENCY at a time; counts those that end wrongly."""

    async def one(kind: _Kind) -> None:
        status, text = await kind.run(gateway)
        if (status, text) != (kind.status, kind.text):
            wrong[f"{kind.name}: {status.name} {text!r}"] += 1

    await run_bounded(
        (functools.partial(one, kind) for kind in itertools.islice(itertools.cycle(kinds), count)), CONCURRENCY
    )


# --- the kinds of call ------------------------------------------------------------------------------


def _stream(upstream: Upstream, fault: Fault) -> Callable[[Gateway], Awaitable[Outcome]]:
    async def run(gateway: Gateway) -> Outcome:
        responses, error = await collect(gateway.stub.StreamChat(upstream.stream_request(fault)))
        text = "".join(response.delta for response in responses)
        return (error.code() if error is not None else grpc.StatusCode.OK), text

    return run


def _chat(upstream: Upstream, fault: Fault) -> Callable[[Gateway], Awaitable[Outcome]]:
    async def run(gateway: Gateway) -> Outcome:
        response, error = await answer(gateway.stub.Chat(upstream.chat_request(fault)))
        return (error.code(), "") if error is not None else (grpc.StatusCode.OK, response.content if response else "")

    return run


def _cancelled(upstream: Upstream, fault: Fault) -> Callable[[Gateway], Awaitable[Outcome]]:
    async def run(gateway: Gateway) -> Outcome:
        return await _cancel_after_first_chunk(gateway.stub.StreamChat(upstream.stream_request(fault)))

    return run


async def _cancel_after_first_chunk(call: grpc.aio.UnaryStreamCall[object, pb.StreamChatResponse]) -> Outcome:
    await call.read()
    call.cancel()
    return await call.code(), ""


def _echo_request(delay_ms: int = 0) -> pb.StreamChatRequest:
    parameters = struct_pb2.Struct()
    if delay_ms:
        parameters.update({"delay_ms": delay_ms})
    return pb.StreamChatRequest(
        service_name="echo", parameters=parameters, messages=[pb.ChatMessage(role="user", content=ECHO_TEXT)]
    )


async def _echo_stream(gateway: Gateway) -> Outcome:
    responses, error = await collect(gateway.stub.StreamChat(_echo_request()))
    deltas = [response.delta for response in responses if response.delta]
    text = "".join(deltas) if deltas == split_words(ECHO_TEXT) else f"pieces {deltas!r}"
    return (error.code() if error is not None else grpc.StatusCode.OK), text


async def _echo_chat(gateway: Gateway) -> Outcome:
    request = _echo_request()
    response, error = await answer(gateway.stub.Chat(pb.ChatRequest(service_name="echo", messages=request.messages)))
    return (error.code(), "") if error is not None else (grpc.StatusCode.OK, response.content if response else "")


async def _echo_cancelled(gateway: Gateway) -> Outcome:
    # 50 ms before each word: the call is still running when it is cancelled after the first.
    return await _cancel_after_first_chunk(gateway.stub.StreamChat(_echo_request(delay_ms=50)))
