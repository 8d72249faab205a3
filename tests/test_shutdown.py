"""Graceful shutdown in-process: streams past the grace period end UNAVAILABLE and close their upstream."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.harness import gateway_for


async def test_streams_left_at_the_end_of_the_grace_period_end_unavailable_and_close_upstream(
    fake_coze: FakeCoze,
) -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"bot_id": fake.BOT_STALL})
    async with gateway_for(fake_coze=fake_coze) as gateway:
        call = gateway.stub.StreamChat(
            pb.StreamChatRequest(
                service_name="coze", parameters=parameters, messages=[pb.ChatMessage(role="user", content="hi")]
            )
        )
        await call.read()
        stopping = asyncio.create_task(gateway.stop(0.3))
        received_more = []
        try:
            while (response := await call.read()) is not grpc.aio.EOF:
                received_more.append(response)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        else:
            raise AssertionError("a stream cut by shutdown must not end OK")
        await stopping
    disconnect = await fake_coze.wait_for_disconnect(timeout=2.0)
    assert disconnect.scenario == fake.BOT_STALL
    assert fake_coze.open_streams == 0
