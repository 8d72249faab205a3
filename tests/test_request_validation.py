"""Invalid requests get a defined status and a message naming the problem, on every RPC."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.base import ChatEvent, ChatInput, ChatService, TextDelta
from providers.echo import EchoChatService
from tests.conftest import error_details
from tests.harness import gateway_for

Call = Callable[[pb_grpc.AIPlatformServiceStub, Any], Awaitable[object]]


async def _unary_chat(stub: pb_grpc.AIPlatformServiceStub, fields: dict[str, Any]) -> object:
    return await stub.Chat(pb.ChatRequest(**fields))


async def _stream_chat(stub: pb_grpc.AIPlatformServiceStub, fields: dict[str, Any]) -> object:
    return [response async for response in stub.StreamChat(pb.StreamChatRequest(**fields))]


async def _unary_workflow(stub: pb_grpc.AIPlatformServiceStub, fields: dict[str, Any]) -> object:
    return await stub.RunWorkflow(pb.RunWorkflowRequest(**fields))


async def _stream_workflow(stub: pb_grpc.AIPlatformServiceStub, fields: dict[str, Any]) -> object:
    return [event async for event in stub.StreamWorkflow(pb.StreamWorkflowRequest(**fields))]


CHAT_CALLS = [pytest.param(_unary_chat, id="Chat"), pytest.param(_stream_chat, id="StreamChat")]
WORKFLOW_CALLS = [pytest.param(_unary_workflow, id="RunWorkflow"), pytest.param(_stream_workflow, id="StreamWorkflow")]
HI = [pb.ChatMessage(role="user", content="hi")]


async def _expect(call: Call, stub: pb_grpc.AIPlatformServiceStub, fields: dict[str, Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(stub, fields)
    return raised.value


@pytest.mark.parametrize("call", CHAT_CALLS)
@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"service_name": "echo"}, "messages", "at least one message"),
        ({"service_name": "echo", "messages": [pb.ChatMessage(role="user")]}, "messages[0].content", "empty"),
        (
            {"service_name": "echo", "messages": [*HI, pb.ChatMessage(role="bot", content="x")]},
            "messages[1].role",
            "'bot'",
        ),
        ({"service_name": "", "messages": HI}, "service_name", "required"),
        ({"service_name": "echo_workflow", "messages": HI}, "service_name", "workflow service"),
        (
            {"service_name": "coze", "messages": [pb.ChatMessage(role="system", content="x"), *HI]},
            "messages[0].role",
            "system",
        ),
        ({"service_name": "coze", "messages": HI}, "parameters.bot_id", "required"),
        (
            {"service_name": "echo", "messages": [*HI, pb.ChatMessage(role="assistant", content="x")]},
            "messages[1].role",
            "last",
        ),
    ],
)
async def test_invalid_chat_requests_name_the_field(
    stub: pb_grpc.AIPlatformServiceStub, call: Call, fields: dict[str, Any], field: str, fragment: str
) -> None:
    error = await _expect(call, stub, fields)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}: ")
    assert fragment in (error.details() or "")
    details = error_details(error)
    assert details["ErrorInfo"].reason == "INVALID_REQUEST"  # type: ignore[attr-defined]
    assert details["BadRequest"].field_violations[0].field == field  # type: ignore[attr-defined]


@pytest.mark.parametrize("call", CHAT_CALLS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
async def test_non_finite_numbers_are_rejected(stub: pb_grpc.AIPlatformServiceStub, call: Call, bad: float) -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"delay_ms": bad})
    error = await _expect(call, stub, {"service_name": "echo", "messages": HI, "parameters": parameters})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "parameters.delay_ms: must be a finite number"


@pytest.mark.parametrize("call", CHAT_CALLS)
async def test_bot_id_given_as_a_number_is_rejected(stub: pb_grpc.AIPlatformServiceStub, call: Call) -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"bot_id": 7379462189365198898})
    error = await _expect(call, stub, {"service_name": "coze", "messages": HI, "parameters": parameters})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Past 2^53 a number has lost digits already, so that is what the caller is told.
    assert (error.details() or "").startswith("parameters.bot_id: integers beyond")
    assert "send it as a string" in (error.details() or "")
    small = struct_pb2.Struct()
    small.update({"bot_id": 12345})
    error = await _expect(call, stub, {"service_name": "coze", "messages": HI, "parameters": small})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("parameters.bot_id: must be a string")


@pytest.mark.parametrize("call", WORKFLOW_CALLS)
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"service_name": "echo"}, "service_name"),
        ({"service_name": "coze_workflow"}, "workflow_id"),
        ({"service_name": ""}, "service_name"),
    ],
)
async def test_invalid_workflow_requests_name_the_field(
    stub: pb_grpc.AIPlatformServiceStub, call: Call, fields: dict[str, Any], field: str
) -> None:
    error = await _expect(call, stub, fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}: ")


@pytest.mark.parametrize("call", CHAT_CALLS + WORKFLOW_CALLS)
async def test_unknown_service_is_not_found(stub: pb_grpc.AIPlatformServiceStub, call: Call) -> None:
    error = await _expect(call, stub, {"service_name": "nope", **({"messages": HI} if "Chat" in str(call) else {})})
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in (error.details() or "")
    assert error_details(error)["ErrorInfo"].reason == "SERVICE_NOT_FOUND"  # type: ignore[attr-defined]


@pytest.fixture
async def unconfigured_stub() -> AsyncIterator[pb_grpc.AIPlatformServiceStub]:
    """A gateway with no COZE_API_TOKEN."""
    async with gateway_for() as gateway:
        yield gateway.stub


@pytest.mark.parametrize(
    ("call", "fields"),
    [
        (_unary_chat, {"service_name": "coze", "messages": HI}),
        (_stream_chat, {"service_name": "coze", "messages": HI}),
        (_unary_workflow, {"service_name": "coze_workflow", "workflow_id": "w"}),
        (_stream_workflow, {"service_name": "coze_workflow", "workflow_id": "w"}),
    ],
)
async def test_service_without_token_is_failed_precondition(
    unconfigured_stub: pb_grpc.AIPlatformServiceStub, call: Call, fields: dict[str, Any]
) -> None:
    error = await _expect(call, unconfigured_stub, fields)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "COZE_API_TOKEN" in (error.details() or "")
    listed = await unconfigured_stub.ListServices(pb.ListServicesRequest())
    coze = next(service for service in listed.services if service.name == fields["service_name"])
    assert not coze.ready and "COZE_API_TOKEN" in coze.not_ready_reason


class _BrokenChatService(ChatService):
    """Fails with a bug whose text holds a secret, after one chunk when streaming."""

    provider = "broken"

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        yield TextDelta("partial")
        raise RuntimeError("boom with pat_secret_token_that_must_not_leak")


async def test_unexpected_errors_become_internal_without_their_text() -> None:
    async with gateway_for(services=[_BrokenChatService("broken", "test"), EchoChatService()]) as gateway:
        stub = gateway.stub
        for call in (_unary_chat, _stream_chat):
            error = await _expect(call, stub, {"service_name": "broken", "messages": HI})
            assert error.code() == grpc.StatusCode.INTERNAL
            assert "pat_secret" not in (error.details() or "")
            assert "boom" not in (error.details() or "")
            assert "error id" in (error.details() or "")
        # The server keeps serving after the failure.
        answer = await stub.Chat(pb.ChatRequest(service_name="echo", messages=HI))
        assert answer.content == "hi"


async def test_a_stream_that_fails_part_way_delivers_its_chunks_then_a_non_ok_status() -> None:
    async with gateway_for(services=[_BrokenChatService("broken", "test")]) as gateway:
        call = gateway.stub.StreamChat(pb.StreamChatRequest(service_name="broken", messages=HI))
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for response in call:
                received.append(response.delta)
        assert received == ["partial"]
        assert raised.value.code() == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize(("rpc", "streaming"), [("Chat", False), ("StreamChat", True), ("ListServices", False)])
async def test_bytes_that_are_no_request_message_are_invalid_argument(
    channel: grpc.aio.Channel, rpc: str, streaming: bool
) -> None:
    path = f"/aiplatform.v1.AIPlatformService/{rpc}"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        if streaming:
            async for _ in channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)(b"\xff"):
                pass
        else:
            await channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)(b"\xff")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("request: the bytes are not a valid request message")


@pytest.mark.parametrize("call", WORKFLOW_CALLS)
@pytest.mark.parametrize(
    ("value", "field"),
    [
        (2**53 + 1, "parameters.order_id"),
        (-(2**60), "parameters.order_id"),
        ({"ids": [1, 2**63]}, "parameters.order_id.ids[1]"),
    ],
)
async def test_integers_a_struct_cannot_hold_exactly_are_refused_naming_the_field(
    stub: pb_grpc.AIPlatformServiceStub, call: Call, value: Any, field: str
) -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"order_id": value})
    error = await _expect(call, stub, {"service_name": "echo_workflow", "parameters": parameters})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}: integers beyond ±9007199254740991")
    assert "send it as a string" in (error.details() or "")
    assert error_details(error)["BadRequest"].field_violations[0].field == field  # type: ignore[attr-defined]


async def test_the_largest_exact_integer_passes_unchanged(stub: pb_grpc.AIPlatformServiceStub) -> None:
    parameters = struct_pb2.Struct()
    parameters.update({"order_id": 2**53 - 1, "negative": -(2**53 - 1)})
    response = await stub.RunWorkflow(pb.RunWorkflowRequest(service_name="echo_workflow", parameters=parameters))
    assert f'"order_id": {2**53 - 1}' in response.output
    assert f'"negative": {-(2**53 - 1)}' in response.output


_TOOL = pb.Tool(name="get_weather", description="the weather in a city")
_PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _violation(error: grpc.aio.AioRpcError) -> Any:
    return error_details(error)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]


def _image(**fields: Any) -> pb.ContentPart:
    return pb.ContentPart(image=pb.ImagePart(**fields))


@pytest.mark.parametrize("call", CHAT_CALLS)
@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        # Tools and tool messages: the shape is checked for every service, then whether it takes them.
        ({"tools": [pb.Tool(name="has space")]}, "tools[0].name", "letters, digits"),
        ({"tools": [_TOOL, _TOOL]}, "tools", "same name"),
        ({"tools": [_TOOL], "tool_choice": "other_tool"}, "tool_choice", "'other_tool'"),
        ({"messages": [pb.ChatMessage(role="tool", content="21°C")]}, "messages[0].tool_call_id", "required"),
        (
            {"messages": [pb.ChatMessage(role="user", content="hi", tool_call_id="call_1")]},
            "messages[0].tool_call_id",
            "'tool' message only",
        ),
        (
            {"messages": [pb.ChatMessage(role="user", content="x", tool_calls=[pb.ToolCall(id="c")])]},
            "messages[0].tool_calls",
            "assistant",
        ),
        (
            {"messages": [pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(function_name="f")])]},
            "messages[0].tool_calls[0].id",
            "empty",
        ),
        ({"tools": [_TOOL]}, "tools", "does not take tools"),
        ({"tool_choice": "none"}, "tool_choice", "does not take tools"),
        # Parts.
        (
            {"messages": [pb.ChatMessage(role="user", content="x", parts=[pb.ContentPart(text="y")])]},
            "messages[0].content",
            "parts replace it",
        ),
        ({"messages": [pb.ChatMessage(role="user", parts=[pb.ContentPart()])]}, "messages[0].parts[0]", "text"),
        (
            {"messages": [pb.ChatMessage(role="user", parts=[_image(url="https://x/a.png", file_id="f")])]},
            "messages[0].parts[0].image",
            "exactly one of",
        ),
        (
            {"messages": [pb.ChatMessage(role="user", parts=[_image(url="file:///etc/passwd")])]},
            "messages[0].parts[0].image.url",
            "http(s)",
        ),
        (
            {"messages": [pb.ChatMessage(role="user", parts=[_image(data=_PNG)])]},
            "messages[0].parts[0].image.mime_type",
            "required",
        ),
        (
            {
                "messages": [
                    pb.ChatMessage(role="user", parts=[pb.ContentPart(file=pb.FilePart(data=b"%PDF", name="a.pdf"))])
                ]
            },
            "messages[0].parts[0].file",
            "mime_type",
        ),
        (
            {"messages": [pb.ChatMessage(role="user", parts=[_image(data=_PNG, mime_type="image/png")])]},
            "messages[0].parts",
            "takes text only",
        ),
    ],
)
async def test_invalid_tools_and_parts_name_the_field(
    stub: pb_grpc.AIPlatformServiceStub, call: Call, fields: dict[str, Any], field: str, fragment: str
) -> None:
    error = await _expect(call, stub, {"service_name": "echo", "messages": HI, **fields})

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = _violation(error)
    assert violation.field == field, error.details()
    assert fragment in violation.description, error.details()


@pytest.mark.parametrize("call", CHAT_CALLS)
async def test_inline_parts_are_refused_past_their_byte_limits_before_any_service_sees_them(call: Call) -> None:
    big = _image(data=b"x" * 600, mime_type="image/png")
    async with gateway_for(max_part_bytes=1000, max_parts_bytes=1000) as gateway:
        too_big = await _expect(
            call,
            gateway.stub,
            {
                "service_name": "echo",
                "messages": [pb.ChatMessage(role="user", parts=[_image(data=b"x" * 1001, mime_type="image/png")])],
            },
        )
        together = await _expect(
            call, gateway.stub, {"service_name": "echo", "messages": [pb.ChatMessage(role="user", parts=[big, big])]}
        )
    assert "AIP_MAX_PART_BYTES" in (too_big.details() or "")
    assert _violation(too_big).field == "messages[0].parts[0].image.data"
    assert "AIP_MAX_PARTS_BYTES" in (together.details() or "")
    assert _violation(together).field == "messages[0].parts[1].image.data"
