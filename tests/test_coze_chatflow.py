"""The coze_chatflow service end to end against a fake Coze, and its question-node rule on lists of events."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.base import ChatFinished, FinishReason, TextDelta
from providers.coze.chatflow import ChatflowTurn
from providers.sse import ServerSentEvent
from tests.conftest import error_details
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import answer, collect, until

APP_ID = "7439828073324773414"
INPUTS = {"city": "北京", "days": 3}


def _parameters(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _request(
    workflow_id: str = fake.CHATFLOW_NORMAL, content: str = "你好", conversation_id: str = "", **parameters: Any
) -> pb.StreamChatRequest:
    return pb.StreamChatRequest(
        service_name="coze_chatflow",
        messages=[pb.ChatMessage(role="user", content=content)],
        parameters=_parameters(workflow_id=workflow_id, **({"app_id": APP_ID} | parameters)),
        conversation_id=conversation_id,
        user_id="user-42",
    )


def _answer(responses: list[pb.StreamChatResponse]) -> str:
    return "".join(response.delta for response in responses)


def _chatflow_bodies(fake_coze: FakeCoze) -> list[Any]:
    return [request.json for request in fake_coze.requests if request.path == "/v1/workflows/chat"]


# --- conversations ------------------------------------------------------------------------------


async def test_chatflow_holds_a_conversation_across_two_turns(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    first, error = await collect(stub.StreamChat(_request(content="第一问", parameters=INPUTS)))
    assert error is None
    assert _answer(first) == fake.chatflow_answer(1, "第一问")
    final = first[-1]
    assert final.finish_reason == pb.FINISH_REASON_STOP and not final.awaiting_reply
    assert final.usage.total_tokens == fake.CHAT_USAGE_TOKEN_COUNT
    assert final.conversation_id and final.chat_id

    second, error = await collect(stub.StreamChat(_request(content="第二问", conversation_id=final.conversation_id)))
    assert error is None
    assert _answer(second) == fake.chatflow_answer(2, "第二问")
    assert second[-1].conversation_id == final.conversation_id
    assert [entry["content"] for entry in fake_coze.conversation_histories[final.conversation_id]] == [
        "第一问",
        fake.chatflow_answer(1, "第一问"),
        "第二问",
        fake.chatflow_answer(2, "第二问"),
    ]
    first_body, second_body = _chatflow_bodies(fake_coze)
    assert first_body["workflow_id"] == fake.CHATFLOW_NORMAL
    assert first_body["app_id"] == APP_ID and "bot_id" not in first_body
    assert first_body["parameters"] == INPUTS and type(first_body["parameters"]["days"]) is int
    assert "conversation_id" not in first_body
    assert first_body["ext"] == {"user_id": "user-42"}
    assert second_body["conversation_id"] == final.conversation_id
    assert [message["content"] for message in second_body["additional_messages"]] == ["第二问"]


async def test_unary_chat_answers_a_chatflow_turn(stub: pb_grpc.AIPlatformServiceStub) -> None:
    streamed = _request(content="问题")
    response = await stub.Chat(
        pb.ChatRequest(service_name="coze_chatflow", messages=streamed.messages, parameters=streamed.parameters)
    )
    assert response.content == fake.chatflow_answer(1, "问题")
    assert response.finish_reason == pb.FINISH_REASON_STOP


@pytest.mark.parametrize("workflow_id", [fake.CHATFLOW_QUESTION, fake.CHATFLOW_QUESTION_REQUIRES_ACTION])
async def test_question_node_ends_the_turn_with_the_question_and_the_next_turn_answers_it(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, workflow_id: str
) -> None:
    asked, error = await collect(stub.StreamChat(_request(workflow_id, content="查天气")))
    assert error is None
    assert _answer(asked) == fake.INTERRUPT_QUESTION
    waiting = asked[-1]
    assert waiting.finish_reason == pb.FINISH_REASON_STOP and waiting.awaiting_reply
    assert not waiting.tool_calls
    assert waiting.conversation_id and waiting.chat_id

    replied, error = await collect(
        stub.StreamChat(_request(workflow_id, content="上海", conversation_id=waiting.conversation_id))
    )
    assert error is None
    assert _answer(replied) == fake.weather_for("上海")
    assert replied[-1].finish_reason == pb.FINISH_REASON_STOP and not replied[-1].awaiting_reply
    # Nothing was left running: a turn that waits for a reply is not cancelled.
    assert not [request for request in fake_coze.requests if request.path == "/v3/chat/cancel"]


async def test_options_reach_coze(stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze) -> None:
    request = _request(
        app_id="",
        bot_id="7379462189365198898",
        workflow_version="v0.0.5",
        connector_id="1024",
        ext={"latitude": "39.9", "user_id": "own"},
    )
    _, error = await collect(stub.StreamChat(request))
    assert error is None
    (received,) = fake_coze.received_chats
    assert received.options == {
        "bot_id": "7379462189365198898",
        "workflow_version": "v0.0.5",
        "connector_id": "1024",
        "ext": {"latitude": "39.9", "user_id": "own"},
    }


async def test_list_services_shows_each_parameter_with_its_type(stub: pb_grpc.AIPlatformServiceStub) -> None:
    services = (await stub.ListServices(pb.ListServicesRequest())).services
    (chatflow,) = [service for service in services if service.name == "coze_chatflow"]
    assert chatflow.ready
    assert {parameter.name: parameter.type for parameter in chatflow.parameters} == {
        "workflow_id": "string",
        "app_id": "string",
        "bot_id": "string",
        "parameters": "object",
        "workflow_version": "string",
        "connector_id": "string",
        "ext": "object",
    }


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"app_id": APP_ID, "bot_id": "b"}, "parameters.app_id"),
        ({"app_id": ""}, "parameters.app_id"),
        ({"parameters": "city"}, "parameters.parameters"),
        ({"ext": {"latitude": 39.9}}, "parameters.ext.latitude"),
        ({"temperature": 1}, "parameters.temperature"),
    ],
)
async def test_invalid_parameters_are_refused_before_coze(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, parameters: dict[str, Any], field: str
) -> None:
    _, error = await collect(stub.StreamChat(_request(**parameters)))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    (violation,) = error_details(error)["BadRequest"].field_violations  # type: ignore[attr-defined]
    assert violation.field == field
    assert not _chatflow_bodies(fake_coze)


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workflow_id", "code"),
    [
        (fake.CHATFLOW_CUT, grpc.StatusCode.UNAVAILABLE),
        (fake.CHATFLOW_ERROR_EVENT, grpc.StatusCode.UNAVAILABLE),
        (fake.CHATFLOW_MISSING, grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_failed_chatflow_is_never_ok(
    stub: pb_grpc.AIPlatformServiceStub, workflow_id: str, code: grpc.StatusCode
) -> None:
    responses, error = await collect(stub.StreamChat(_request(workflow_id)))
    assert error is not None and error.code() == code
    assert all(not response.finish_reason for response in responses)


async def test_failed_chatflow_carries_coze_code(stub: pb_grpc.AIPlatformServiceStub) -> None:
    response, error = await answer(stub.Chat(pb.ChatRequest(**_unary_fields(fake.CHATFLOW_FAILED))))
    assert response is None and error is not None
    assert error.code() != grpc.StatusCode.OK
    assert error_details(error)["ErrorInfo"].metadata["upstream_code"] == "720702204"  # type: ignore[attr-defined]


async def test_cut_chatflow_is_cancelled_at_coze(stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze) -> None:
    _, error = await collect(stub.StreamChat(_request(fake.CHATFLOW_CUT)))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    (cancel,) = await fake_coze.wait_for_requests("/v3/chat/cancel")
    (received,) = fake_coze.received_chats
    assert cancel.json == {"conversation_id": received.conversation_id, "chat_id": received.chat_id}


async def test_cancelled_chatflow_is_cancelled_at_coze(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    call = stub.StreamChat(_request(fake.CHATFLOW_STALL))
    await call.read()
    call.cancel()
    await fake_coze.wait_for_disconnect(timeout=2.0)
    (cancel,) = await fake_coze.wait_for_requests("/v3/chat/cancel")
    (received,) = fake_coze.received_chats
    assert cancel.json["chat_id"] == received.chat_id
    await until(lambda: received.chat_id in fake_coze.cancelled_chats)


def _unary_fields(workflow_id: str) -> dict[str, Any]:
    streamed = _request(workflow_id)
    return {"service_name": "coze_chatflow", "messages": streamed.messages, "parameters": streamed.parameters}


# --- the question-node rule, on lists of events ---------------------------------------------------


def _event(name: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(event=name, data=json.dumps(data))


_CREATED = _event("conversation.chat.created", {"id": "chat-1", "conversation_id": "conv-1", "status": "created"})
_DELTA = _event("conversation.message.delta", {"id": "m-1", "type": "answer", "content": "哪个城市？"})


def _read(events: list[ServerSentEvent]) -> tuple[ChatflowTurn, list[object]]:
    turn = ChatflowTurn()
    read: list[object] = []
    for sse in events:
        read.extend(turn.read(sse))
        if turn.ended:
            break
    return turn, read


def test_verbose_interrupt_ends_the_turn_waiting_for_a_reply() -> None:
    interrupt = {"id": "v-1", "type": "verbose", "content": json.dumps({"msg_type": "interrupt", "data": ""})}
    turn, read = _read([_CREATED, _DELTA, _event("conversation.message.completed", interrupt)])
    assert turn.ended and turn.awaits_reply
    assert read == [
        TextDelta("哪个城市？"),
        ChatFinished(finish_reason=FinishReason.STOP, conversation_id="conv-1", chat_id="chat-1", awaiting_reply=True),
    ]


def test_requires_action_without_tool_calls_ends_the_turn_waiting_for_a_reply() -> None:
    waiting = {"id": "chat-1", "conversation_id": "conv-1", "status": "requires_action", "execute_id": "e-1"}
    turn, read = _read([_CREATED, _DELTA, _event("conversation.chat.requires_action", waiting)])
    assert turn.awaits_reply
    assert read[-1] == ChatFinished(
        finish_reason=FinishReason.STOP, conversation_id="conv-1", chat_id="chat-1", awaiting_reply=True
    )


def test_other_verbose_messages_do_not_end_the_turn() -> None:
    finish = {"id": "v-1", "type": "verbose", "content": json.dumps({"msg_type": "generate_answer_finish"})}
    turn, read = _read([_CREATED, _DELTA, _event("conversation.message.completed", finish)])
    assert not turn.ended and not turn.awaits_reply
    assert read == [TextDelta("哪个城市？")]
