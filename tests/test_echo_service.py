"""The demo services over a real gRPC channel: what `make run` users call first."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.echo import split_words


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


@pytest.mark.parametrize(
    "text",
    ["你好 world", "  leading and trailing  ", "one", "tabs\tand\nnewlines \n", "多个 词 在 一起"],
)
def test_split_words_joins_back_to_the_input(text: str) -> None:
    pieces = split_words(text)
    assert "".join(pieces) == text
    assert all(piece.strip() for piece in pieces[:-1])


async def test_stream_chat_streams_the_message_back_word_by_word(stub: pb_grpc.AIPlatformServiceStub) -> None:
    request = pb.StreamChatRequest(
        service_name="echo", messages=[pb.ChatMessage(role="user", content="你好 world")], conversation_id="c-1"
    )
    responses = [response async for response in stub.StreamChat(request)]

    assert [response.delta for response in responses[:-1]] == ["你好", " world"]
    final = responses[-1]
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert final.usage.output_tokens == 2
    assert final.conversation_id == "c-1"
    assert all(response.finish_reason == pb.FINISH_REASON_UNSPECIFIED for response in responses[:-1])


async def test_chat_returns_the_whole_message(stub: pb_grpc.AIPlatformServiceStub) -> None:
    response = await stub.Chat(
        pb.ChatRequest(
            service_name="echo",
            messages=[
                pb.ChatMessage(role="system", content="be brief"),
                pb.ChatMessage(role="user", content="first"),
                pb.ChatMessage(role="assistant", content="ok"),
                pb.ChatMessage(role="user", content=" the  last\tone "),
            ],
        )
    )
    assert response.content == " the  last\tone "
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


async def test_stream_workflow_streams_each_parameter_then_the_output(stub: pb_grpc.AIPlatformServiceStub) -> None:
    request = pb.StreamWorkflowRequest(service_name="echo_workflow", parameters=_struct({"n": 3, "city": "北京"}))
    events = [event async for event in stub.StreamWorkflow(request)]

    assert [(event.node_title, event.content) for event in events[:-1]] == [("city", '"北京"'), ("n", "3")]
    assert events[-1].node_title == "End"
    # Struct carries 3 as 3.0; the gateway hands integral numbers on as integers.
    assert json.loads(events[-1].content) == {"output": {"n": 3, "city": "北京"}}
    assert '"n": 3}' in events[-1].content


async def test_run_workflow_returns_the_output(stub: pb_grpc.AIPlatformServiceStub) -> None:
    response = await stub.RunWorkflow(
        pb.RunWorkflowRequest(service_name="echo_workflow", parameters=_struct({"ratio": 0.5, "ok": True}))
    )
    assert json.loads(response.output) == {"output": {"ratio": 0.5, "ok": True}}


async def test_list_services_shows_every_service_with_readiness(stub: pb_grpc.AIPlatformServiceStub) -> None:
    response = await stub.ListServices(pb.ListServicesRequest())
    services = {service.name: service for service in response.services}

    assert list(services) == sorted(services)
    assert set(services) == {"coze", "coze_chatflow", "coze_workflow", "echo", "echo_workflow", "openai"}
    assert (services["echo"].type, services["echo"].provider, services["echo"].ready) == ("chat", "echo", True)
    assert services["echo_workflow"].type == "workflow"
    assert services["coze"].ready and services["coze"].streaming
    assert all(service.description for service in services.values())


@pytest.mark.parametrize(
    ("service_type", "expected"),
    [
        ("chat", {"coze", "coze_chatflow", "echo", "openai"}),
        ("workflow", {"coze_workflow", "echo_workflow"}),
        ("image", set()),
    ],
)
async def test_list_services_filters_by_type(
    stub: pb_grpc.AIPlatformServiceStub, service_type: str, expected: set[str]
) -> None:
    response = await stub.ListServices(pb.ListServicesRequest(service_type=service_type))
    assert {service.name for service in response.services} == expected


async def test_echo_rejects_unknown_parameters_naming_the_key(stub: pb_grpc.AIPlatformServiceStub) -> None:
    request = pb.ChatRequest(
        service_name="echo", messages=[pb.ChatMessage(role="user", content="hi")], parameters=_struct({"tempo": 1})
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Chat(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters.tempo" in (raised.value.details() or "")


async def test_delay_ms_must_be_an_integer(stub: pb_grpc.AIPlatformServiceStub) -> None:
    request = pb.ChatRequest(
        service_name="echo", messages=[pb.ChatMessage(role="user", content="hi")], parameters=_struct({"delay_ms": 1.5})
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Chat(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters.delay_ms: must be an integer" in (raised.value.details() or "")
