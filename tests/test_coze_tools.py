"""A Coze bot's tool loop through the gateway: the turn ends with tool calls, the caller answers with tool messages.

The answer goes to /v3/chat/submit_tool_outputs (streamed) with the turn's conversation_id and
chat_id, and its continuation is relayed with every guarantee of a chat: usage, never OK unless
Coze completed it, a bot that asks again, a cancel at Coze when the caller leaves or the stream
is cut or stalls. What a Coze bot cannot take (tools, tool calls in the history, misplaced tool
messages) is refused with INVALID_ARGUMENT naming the field, before Coze sees anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from tests.conftest import error_details
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import answer, collect

SUBMIT_PATH = "/v3/chat/submit_tool_outputs"
CANCEL_PATH = "/v3/chat/cancel"
QUESTION = [pb.ChatMessage(role="user", content="北京天气怎么样？")]
RPCS = ["StreamChat", "Chat"]


def _parameters(bot_id: str) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({"bot_id": bot_id})
    return struct


async def _turn(stub: pb_grpc.AIPlatformServiceStub, rpc: str, bot_id: str, **fields: Any) -> Any:
    """One chat turn's final answer (a ChatResponse, or the last StreamChatResponse with the joined deltas)."""
    fields.setdefault("messages", QUESTION)
    if rpc == "Chat":
        return await stub.Chat(pb.ChatRequest(service_name="coze", parameters=_parameters(bot_id), **fields))
    responses, error = await collect(
        stub.StreamChat(pb.StreamChatRequest(service_name="coze", parameters=_parameters(bot_id), **fields))
    )
    assert error is None, error
    final = responses[-1]
    return final, "".join(response.delta for response in responses)


def _final(rpc: str, turn: Any) -> tuple[Any, str]:
    """The final message of a turn and its whole answer text, for either RPC."""
    return (turn, turn.content) if rpc == "Chat" else turn


def _outputs(calls: Iterable[tuple[str, str, str]]) -> list[pb.ChatMessage]:
    """The caller's tool messages: one output per call, naming the call's tool and arguments."""
    return [
        pb.ChatMessage(role="tool", tool_call_id=call_id, content=f"{name}:{arguments}")
        for call_id, name, arguments in calls
    ]


def _calls(message: Any) -> list[tuple[str, str, str]]:
    return [(call.id, call.function_name, call.arguments) for call in message.tool_calls]


# The continuation begins with chat.in_progress (BOT_REQUIRES_ACTION), or with chat.created as
# Coze's example of submit_tool_outputs shows it (BOT_TOOLS_CONTINUATION_CREATED).
@pytest.mark.parametrize("bot_id", [fake.BOT_REQUIRES_ACTION, fake.BOT_TOOLS_CONTINUATION_CREATED])
@pytest.mark.parametrize("rpc", RPCS)
async def test_a_whole_tool_loop_submits_the_outputs_and_relays_the_continuation(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str, bot_id: str
) -> None:
    asked, text = _final(rpc, await _turn(stub, rpc, bot_id))
    assert asked.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert _calls(asked) == list(fake.FIRST_TOOL_CALLS)
    assert text == ""
    assert asked.conversation_id and asked.chat_id

    outputs = _outputs(fake.FIRST_TOOL_CALLS)
    done, text = _final(
        rpc,
        await _turn(
            stub,
            rpc,
            bot_id,
            messages=outputs,
            conversation_id=asked.conversation_id,
            chat_id=asked.chat_id,
        ),
    )

    assert done.finish_reason == pb.FINISH_REASON_STOP
    assert text == fake.tool_answer(message.content for message in outputs)
    assert done.usage.total_tokens == fake.CHAT_USAGE_TOKEN_COUNT
    assert (done.conversation_id, done.chat_id) == (asked.conversation_id, asked.chat_id)
    (submitted,) = fake_coze.submitted_tool_outputs
    assert submitted.outputs == {message.tool_call_id: message.content for message in outputs}
    assert submitted.stream is True, "the continuation streams, for Chat too (it is the joined stream)"
    (request,) = [request for request in fake_coze.requests if request.path == SUBMIT_PATH]
    assert request.query == {"conversation_id": asked.conversation_id, "chat_id": asked.chat_id}
    assert [request.path for request in fake_coze.requests].count("/v3/chat") == 1
    assert not [request for request in fake_coze.requests if request.path == CANCEL_PATH]


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_bot_that_asks_again_ends_the_continuation_with_the_new_calls(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str
) -> None:
    first, _ = _final(rpc, await _turn(stub, rpc, fake.BOT_TOOLS_TWICE))
    ids = {"conversation_id": first.conversation_id, "chat_id": first.chat_id}
    second, text = _final(
        rpc, await _turn(stub, rpc, fake.BOT_TOOLS_TWICE, messages=_outputs(fake.FIRST_TOOL_CALLS), **ids)
    )

    assert second.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert _calls(second) == list(fake.SECOND_TOOL_CALLS)
    assert (second.conversation_id, second.chat_id) == (first.conversation_id, first.chat_id)
    assert second.usage.total_tokens == fake.CHAT_USAGE_TOKEN_COUNT

    outputs = _outputs(fake.SECOND_TOOL_CALLS)
    third, text = _final(rpc, await _turn(stub, rpc, fake.BOT_TOOLS_TWICE, messages=outputs, **ids))
    assert third.finish_reason == pb.FINISH_REASON_STOP
    assert text == fake.tool_answer(message.content for message in outputs)
    assert len(fake_coze.submitted_tool_outputs) == 2


async def _asked(stub: pb_grpc.AIPlatformServiceStub, bot_id: str) -> pb.StreamChatRequest:
    """The continuation request that answers ``bot_id``'s first tool calls."""
    asked, _ = _final("StreamChat", await _turn(stub, "StreamChat", bot_id))
    return pb.StreamChatRequest(
        service_name="coze",
        parameters=_parameters(bot_id),
        messages=_outputs(fake.FIRST_TOOL_CALLS),
        conversation_id=asked.conversation_id,
        chat_id=asked.chat_id,
    )


async def _cancelled(fake_coze: FakeCoze, request: pb.StreamChatRequest) -> fake.RecordedRequest:
    (cancel,) = await fake_coze.wait_for_requests(CANCEL_PATH, timeout=3.0)
    assert cancel.json == {"conversation_id": request.conversation_id, "chat_id": request.chat_id}
    return cancel


async def test_a_caller_who_leaves_a_continuation_cancels_the_chat_at_coze(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    request = await _asked(stub, fake.BOT_TOOLS_CONTINUATION_STALL)
    call = stub.StreamChat(request)
    first = await call.read()
    assert first.delta

    cancelled_at = time.monotonic()
    call.cancel()
    cancel = await _cancelled(fake_coze, request)
    assert cancel.time - cancelled_at < 1.0


async def test_a_continuation_past_its_deadline_is_cancelled_at_coze(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    request = await _asked(stub, fake.BOT_TOOLS_CONTINUATION_STALL)
    _, error = await collect(stub.StreamChat(request, timeout=0.5))
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await _cancelled(fake_coze, request)


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_cut_continuation_is_unavailable_and_cancelled_at_coze(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str
) -> None:
    request = await _asked(stub, fake.BOT_TOOLS_CONTINUATION_CUT)
    if rpc == "Chat":
        unary = pb.ChatRequest(
            service_name="coze",
            parameters=request.parameters,
            messages=request.messages,
            conversation_id=request.conversation_id,
            chat_id=request.chat_id,
        )
        _, error = await answer(stub.Chat(unary))
        responses: list[Any] = []
    else:
        responses, error = await collect(stub.StreamChat(request))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert all(response.finish_reason == pb.FINISH_REASON_UNSPECIFIED for response in responses)
    await _cancelled(fake_coze, request)


async def test_a_failed_continuation_is_never_ok_and_needs_no_cancel(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    request = await _asked(stub, fake.BOT_TOOLS_CONTINUATION_FAILED)
    responses, error = await collect(stub.StreamChat(request))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert all(response.finish_reason == pb.FINISH_REASON_UNSPECIFIED for response in responses)
    await asyncio.sleep(0.2)
    assert not [request for request in fake_coze.requests if request.path == CANCEL_PATH]


async def test_outputs_coze_refuses_leave_the_chat_waiting_for_them(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    request = await _asked(stub, fake.BOT_REQUIRES_ACTION)
    wrong = pb.StreamChatRequest()
    wrong.CopyFrom(request)
    del wrong.messages[:]
    wrong.messages.append(pb.ChatMessage(role="tool", tool_call_id="call_unknown", content="?"))
    _, error = await collect(stub.StreamChat(wrong))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT

    # No cancel went to Coze: the chat still waits, and the right outputs continue it.
    responses, error = await collect(stub.StreamChat(request))
    assert error is None
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    assert not [request for request in fake_coze.requests if request.path == CANCEL_PATH]


TOOL = pb.Tool(name="get_weather", description="the weather of a city")
ASSISTANT_CALL = pb.ChatMessage(
    role="assistant",
    tool_calls=[
        pb.ToolCall(id=fake.TOOL_CALL_ID, function_name=fake.TOOL_CALL_NAME, arguments=fake.TOOL_CALL_ARGUMENTS)
    ],
)
OUTPUT = pb.ChatMessage(role="tool", tool_call_id=fake.TOOL_CALL_ID, content="晴")
IDS = {"conversation_id": "7381473525342978089", "chat_id": "7382159487131697202"}


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"tools": [TOOL]}, "tools", "plugins"),
        ({"tool_choice": "auto"}, "tool_choice", "plugins"),
        ({"messages": [*QUESTION, ASSISTANT_CALL, OUTPUT], **IDS}, "messages[1].tool_calls", "server-side"),
        ({"messages": [ASSISTANT_CALL, OUTPUT], **IDS}, "messages[0].tool_calls", "server-side"),
        ({"messages": [OUTPUT, *QUESTION], **IDS}, "messages[0].role", "come last"),
        ({"messages": [*QUESTION, OUTPUT], **IDS}, "messages[0]", "only the 'tool' messages"),
        ({"messages": [OUTPUT], "chat_id": IDS["chat_id"]}, "conversation_id", "is required"),
        ({"messages": [OUTPUT], "conversation_id": IDS["conversation_id"]}, "chat_id", "is required"),
        ({"chat_id": IDS["chat_id"]}, "chat_id", "with them only"),
    ],
    ids=[
        "tools",
        "tool_choice",
        "assistant-tool-calls",
        "openai-style-history",
        "tool-not-last",
        "history-before-outputs",
        "no-conversation-id",
        "no-chat-id",
        "chat-id-without-outputs",
    ],
)
@pytest.mark.parametrize("rpc", RPCS)
async def test_what_a_coze_bot_cannot_take_is_refused_naming_the_field(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str, fields: dict[str, Any], field: str, words: str
) -> None:
    fields.setdefault("messages", QUESTION)
    kind = pb.ChatRequest if rpc == "Chat" else pb.StreamChatRequest
    request = kind(service_name="coze", parameters=_parameters(fake.BOT_REQUIRES_ACTION), **fields)
    if rpc == "Chat":
        _, error = await answer(stub.Chat(request))
    else:
        _, error = await collect(stub.StreamChat(request))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = error_details(error)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == field
    assert words in violation.description
    assert fake_coze.requests == []
