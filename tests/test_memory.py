"""Refused calls free what they held: memory after hundreds of refused large requests is what valid ones leave.

grpc keeps the exception ``context.abort()`` raises on the call, and its traceback holds the
frames that hold the request: a cycle only a full garbage collection frees, which the gateway's
GC tuning (server/app.py) makes rare. The gateway sets the status instead of aborting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from tests.gateway_process import gateway_env, running_gateway

ROOT = Path(__file__).resolve().parent.parent
CALLS = 200
#: 12 messages of 250 KiB: a 3 MiB request, under both the 4 MiB receive limit and 256 KiB per message.
PART = "x" * (250 * 1024)
MIB = 2**20
#: What valid calls may leave, and refused ones beyond that. Before the fix, 200 refused
#: requests left over 600 MiB.
TOLERANCE = 64 * MIB
_BIG = [("grpc.max_send_message_length", 8 * MIB)]

Call = Callable[[grpc.aio.Channel], Awaitable[grpc.StatusCode]]


def _messages(last_role: str = "user") -> list[pb.ChatMessage]:
    messages = [pb.ChatMessage(role="user", content=PART) for _ in range(12)]
    messages[-1].role = last_role
    return messages


async def _code(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _valid_chat(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = pb_grpc.AIPlatformServiceStub(channel)
    return await _code(stub.Chat(pb.ChatRequest(service_name="echo", messages=_messages())))


async def _bad_role_chat(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = pb_grpc.AIPlatformServiceStub(channel)
    return await _code(stub.Chat(pb.ChatRequest(service_name="echo", messages=_messages("bad"))))


async def _bad_role_stream(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = pb_grpc.AIPlatformServiceStub(channel)
    call = stub.StreamChat(pb.StreamChatRequest(service_name="echo", messages=_messages("bad")))

    async def read_all() -> None:
        async for _ in call:
            pass

    return await _code(read_all())


async def _unknown_service(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = pb_grpc.AIPlatformServiceStub(channel)
    return await _code(stub.Chat(pb.ChatRequest(service_name="nope", messages=_messages())))


async def _undecodable_workflow(channel: grpc.aio.Channel) -> grpc.StatusCode:
    # Field 1 (service_name), a 3 MiB string of invalid UTF-8: the bytes do not parse.
    payload = b"\x0a" + _varint(len(PART) * 12) + b"\xff" * (len(PART) * 12)
    run: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/aiplatform.v1.AIPlatformService/RunWorkflow"
    )
    return await _code(run(payload))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


REFUSED: list[tuple[Call, grpc.StatusCode]] = [
    (_bad_role_chat, grpc.StatusCode.INVALID_ARGUMENT),
    (_bad_role_stream, grpc.StatusCode.INVALID_ARGUMENT),
    (_unknown_service, grpc.StatusCode.NOT_FOUND),
    (_undecodable_workflow, grpc.StatusCode.INVALID_ARGUMENT),
]


async def test_refused_large_requests_leave_no_more_memory_than_valid_ones() -> None:
    async with (
        running_gateway(gateway_env(), ROOT, channel_options=_BIG) as gateway,
        gateway.collected_log(),
    ):
        channel = gateway.channel
        for _ in range(10):  # warm-up: grpc's and the allocator's steady state
            assert await _valid_chat(channel) == grpc.StatusCode.OK
        start = gateway.rss_bytes()
        for _ in range(CALLS):
            assert await _valid_chat(channel) == grpc.StatusCode.OK
        after_valid = gateway.rss_bytes()

        codes = [await call(channel) for index in range(CALLS) for call, _ in [REFUSED[index % len(REFUSED)]]]
        after_refused = gateway.rss_bytes()

    expected = [code for index in range(CALLS) for _, code in [REFUSED[index % len(REFUSED)]]]
    assert codes == expected
    valid_growth, refused_growth = after_valid - start, after_refused - after_valid
    # Valid calls leave next to nothing either (a request left in a cycle once held 900 MiB).
    assert valid_growth < TOLERANCE, f"{CALLS} valid 3 MiB requests grew the gateway by {valid_growth / MIB:.0f} MiB"
    assert refused_growth < max(valid_growth, 0) + TOLERANCE, (
        f"{CALLS} refused 3 MiB requests grew the gateway by {refused_growth / MIB:.0f} MiB, "
        f"{CALLS} valid ones by {valid_growth / MIB:.0f} MiB"
    )
