"""Coze features beyond the answer text: resuming interrupted workflows, tool calls, follow-ups,
and cancelling a chat upstream when the caller leaves. End to end against a fake Coze."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from tests.conftest import error_details
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import collect

HI = [pb.ChatMessage(role="user", content="hi")]
CANCEL_PATH = "/v3/chat/cancel"
RESUME_PATH = "/v1/workflow/stream_resume"


def _stream_chat(bot_id: str) -> pb.StreamChatRequest:
    parameters = struct_pb2.Struct()
    parameters.update({"bot_id": bot_id})
    return pb.StreamChatRequest(service_name="coze", messages=HI, parameters=parameters)


def _chat(bot_id: str) -> pb.ChatRequest:
    parameters = struct_pb2.Struct()
    parameters.update({"bot_id": bot_id})
    return pb.ChatRequest(service_name="coze", messages=HI, parameters=parameters)


def _resume(**fields: Any) -> pb.ResumeWorkflowRequest:
    values: dict[str, Any] = {
        "service_name": "coze_workflow",
        "workflow_id": fake.WORKFLOW_INTERRUPT,
        "event_id": fake.INTERRUPT_EVENT_ID,
        "resume_data": "上海",
        "interrupt_type": fake.INTERRUPT_TYPE,
    }
    values.update(fields)
    return pb.ResumeWorkflowRequest(**values)


def _chat_of(fake_coze: FakeCoze, bot_id: str) -> fake.CreatedChat:
    (created,) = [chat for chat in fake_coze.created_chats if chat.bot_id == bot_id]
    return created


# --- ResumeWorkflow -----------------------------------------------------------------------------


async def test_interrupt_answered_through_resume_workflow_runs_to_the_end(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    started, error = await collect(
        stub.StreamWorkflow(pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_INTERRUPT))
    )
    assert error is None
    interrupt = started[-1].interrupt
    assert interrupt.event_id == fake.INTERRUPT_EVENT_ID

    resumed, error = await collect(
        stub.ResumeWorkflow(
            pb.ResumeWorkflowRequest(
                service_name="coze_workflow",
                workflow_id=fake.WORKFLOW_INTERRUPT,
                event_id=interrupt.event_id,
                resume_data="上海",
                interrupt_type=interrupt.type,
            )
        )
    )

    assert error is None
    assert all(isinstance(event, pb.ResumeWorkflowResponse) for event in resumed)
    end = resumed[-2]  # the last message is Done's debug_url
    assert (end.node_title, end.node_is_finish) == ("End", True)
    assert "上海" in json.loads(end.content)["output"]
    assert end.usage.total_tokens == fake.WORKFLOW_USAGE_TOKEN_COUNT
    assert not any(event.HasField("interrupt") for event in resumed)
    (sent,) = [request for request in fake_coze.requests if request.path == RESUME_PATH]
    # Exactly the body Coze documents: resume_data a string, interrupt_type an integer.
    assert sent.json == {
        "workflow_id": fake.WORKFLOW_INTERRUPT,
        "event_id": fake.INTERRUPT_EVENT_ID,
        "resume_data": "上海",
        "interrupt_type": fake.INTERRUPT_TYPE,
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_id": ""}, "event_id"),
        ({"resume_data": ""}, "resume_data"),
        ({"workflow_id": ""}, "workflow_id"),  # and no COZE_DEFAULT_WORKFLOW_ID
        ({"service_name": "echo_workflow"}, "service_name"),  # a workflow service that cannot resume
        ({"service_name": "coze"}, "service_name"),  # a chat service
    ],
)
async def test_resume_without_what_it_needs_is_invalid_argument_naming_the_field(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, fields: dict[str, str], field: str
) -> None:
    received, error = await collect(stub.ResumeWorkflow(_resume(**fields)))

    assert received == []
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}:")
    violation = error_details(error)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == field
    assert fake_coze.requests == [], "an invalid resume must not reach Coze"


async def test_resume_of_an_unknown_event_is_not_found(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    received, error = await collect(stub.ResumeWorkflow(_resume(event_id="7404830425073352713/1")))

    assert received == []
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND
    info = error_details(error)["ErrorInfo"]
    assert info.reason == "UPSTREAM_NOT_FOUND"  # type: ignore[attr-defined]
    assert dict(info.metadata) == {  # type: ignore[attr-defined]
        "provider": "coze",
        "upstream_code": "4314",
        "log_id": fake_coze.requests[-1].log_id,
    }


async def test_a_resumed_workflow_that_fails_part_way_never_ends_ok(stub: pb_grpc.AIPlatformServiceStub) -> None:
    received, error = await collect(stub.ResumeWorkflow(_resume(workflow_id=fake.WORKFLOW_ERROR_EVENT)))

    assert len(received) == 1
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert "workflow node failed (provider=coze, code=5000" in (error.details() or "")


async def test_cancelled_resume_closes_the_upstream_connection(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    call = stub.ResumeWorkflow(_resume(workflow_id=fake.WORKFLOW_STALL))
    first = await call.read()
    assert first.node_title == "End"

    cancelled_at = time.monotonic()
    call.cancel()
    disconnect = await fake_coze.wait_for_disconnect(timeout=2.0)
    assert (disconnect.path, disconnect.scenario) == (RESUME_PATH, fake.WORKFLOW_STALL)
    assert disconnect.time - cancelled_at < 1.0


# --- requires_action: tool calls ----------------------------------------------------------------


async def test_requires_action_gives_the_tool_calls_on_the_final_stream_message(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    responses, error = await collect(stub.StreamChat(_stream_chat(fake.BOT_REQUIRES_ACTION)))

    assert error is None
    final = responses[-1]
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(call.id, call.type, call.function_name, call.arguments) for call in final.tool_calls] == [
        (fake.TOOL_CALL_ID, "function", fake.TOOL_CALL_NAME, fake.TOOL_CALL_ARGUMENTS)
    ]
    # What a caller needs to submit the tool outputs for this turn.
    created = _chat_of(fake_coze, fake.BOT_REQUIRES_ACTION)
    assert (final.conversation_id, final.chat_id) == (created.conversation_id, created.chat_id)
    assert all(not response.tool_calls for response in responses[:-1])


async def test_requires_action_gives_the_tool_calls_on_chat(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    response = await stub.Chat(_chat(fake.BOT_REQUIRES_ACTION))

    assert response.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    (tool_call,) = response.tool_calls
    assert (tool_call.id, tool_call.function_name, json.loads(tool_call.arguments)) == (
        fake.TOOL_CALL_ID,
        fake.TOOL_CALL_NAME,
        json.loads(fake.TOOL_CALL_ARGUMENTS),
    )
    created = _chat_of(fake_coze, fake.BOT_REQUIRES_ACTION)
    assert (response.conversation_id, response.chat_id) == (created.conversation_id, created.chat_id)


async def test_a_finished_answer_has_no_tool_calls(stub: pb_grpc.AIPlatformServiceStub) -> None:
    response = await stub.Chat(_chat(fake.BOT_NORMAL))
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert list(response.tool_calls) == [] and list(response.follow_ups) == []


# --- follow-up suggestions ----------------------------------------------------------------------


async def test_follow_ups_arrive_in_their_own_field_on_the_final_stream_message(
    stub: pb_grpc.AIPlatformServiceStub,
) -> None:
    responses, error = await collect(stub.StreamChat(_stream_chat(fake.BOT_FOLLOW_UPS)))

    assert error is None
    assert list(responses[-1].follow_ups) == list(fake.FOLLOW_UP_QUESTIONS)
    assert "".join(response.delta for response in responses) == fake.DEFAULT_ANSWER
    assert all(not response.follow_ups for response in responses[:-1])


@pytest.mark.parametrize(
    ("bot_id", "follow_ups"),
    [(fake.BOT_FOLLOW_UPS, fake.FOLLOW_UP_QUESTIONS), (fake.BOT_VERBOSE_AND_UNKNOWN, (fake.FOLLOW_UP_QUESTION,))],
)
async def test_follow_ups_arrive_in_their_own_field_on_chat(
    stub: pb_grpc.AIPlatformServiceStub, bot_id: str, follow_ups: tuple[str, ...]
) -> None:
    response = await stub.Chat(_chat(bot_id))

    assert list(response.follow_ups) == list(follow_ups)
    assert response.content == fake.DEFAULT_ANSWER
    assert response.finish_reason == pb.FINISH_REASON_STOP


# --- cancelling the chat upstream ---------------------------------------------------------------


async def test_cancelled_stream_chat_cancels_the_chat_at_coze(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    call = stub.StreamChat(_stream_chat(fake.BOT_STALL))
    assert (await call.read()).delta and (await call.read()).delta

    cancelled_at = time.monotonic()
    call.cancel()
    (cancel,) = await fake_coze.wait_for_requests(CANCEL_PATH, timeout=2.0)

    assert cancel.time - cancelled_at < 1.0
    created = _chat_of(fake_coze, fake.BOT_STALL)
    assert cancel.json == {"conversation_id": created.conversation_id, "chat_id": created.chat_id}
    assert cancel.headers["authorization"] == f"Bearer {fake_coze.token}"
    # The stream itself was closed too, not left to the cancel.
    disconnect = await fake_coze.wait_for_disconnect(timeout=2.0)
    assert disconnect.scenario == fake.BOT_STALL


async def test_chat_past_its_deadline_cancels_the_chat_at_coze(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Chat(_chat(fake.BOT_STALL), timeout=0.5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    (cancel,) = await fake_coze.wait_for_requests(CANCEL_PATH, timeout=2.0)
    created = _chat_of(fake_coze, fake.BOT_STALL)
    assert cancel.json == {"conversation_id": created.conversation_id, "chat_id": created.chat_id}


async def test_chats_that_coze_ended_are_never_cancelled(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    # Completed, waiting for tool outputs, or failed upstream: Coze already ended each chat.
    for bot_id in (fake.BOT_NORMAL, fake.BOT_FOLLOW_UPS, fake.BOT_REQUIRES_ACTION):
        _, error = await collect(stub.StreamChat(_stream_chat(bot_id)))
        assert error is None
        await stub.Chat(_chat(bot_id))
    _, error = await collect(stub.StreamChat(_stream_chat(fake.BOT_FAILED)))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    # A caller that leaves as soon as it has the final message, while the gateway still
    # reads the rest of Coze's body: the chat completed, so there is nothing to cancel.
    lingering = stub.StreamChat(_stream_chat(fake.BOT_NO_CLOSE))
    while (await lingering.read()).finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        pass
    lingering.cancel()
    await fake_coze.wait_for_disconnect(timeout=2.0)

    # A chat that is cancelled afterwards is the barrier: a stray cancel scheduled for
    # any earlier chat would have reached the fake before this one.
    call = stub.StreamChat(_stream_chat(fake.BOT_STALL))
    await call.read()
    call.cancel()
    cancels = await fake_coze.wait_for_requests(CANCEL_PATH, timeout=2.0)

    stalled = _chat_of(fake_coze, fake.BOT_STALL)
    assert [request.json["chat_id"] for request in cancels] == [stalled.chat_id]
