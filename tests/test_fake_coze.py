"""Checks that the fake Coze server speaks the wire format the real cozepy 0.20.0 client expects."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from cozepy import (
    AsyncCoze,
    AsyncHTTPClient,
    AsyncTokenAuth,
    ChatEvent,
    ChatEventType,
    ChatStatus,
    CozeAPIError,
    CozeInvalidEventError,
    Message,
    MessageType,
    WorkflowEventType,
)

from tests.fakes.coze import (
    BOT_BAD_REQUEST,
    BOT_COMPLETED_ONLY,
    BOT_CUT,
    BOT_ERROR_EVENT,
    BOT_FAILED,
    BOT_HTTP_502,
    BOT_MALFORMED,
    BOT_MISSING,
    BOT_NO_CLOSE,
    BOT_NORMAL,
    BOT_RATE_LIMITED,
    BOT_REASONING,
    BOT_REQUIRES_ACTION,
    BOT_SLOW,
    BOT_SPLIT_UTF8,
    BOT_STALL,
    BOT_VERBOSE_AND_UNKNOWN,
    CHAT_USAGE_INPUT_COUNT,
    CHAT_USAGE_OUTPUT_COUNT,
    CHAT_USAGE_TOKEN_COUNT,
    DEFAULT_ANSWER,
    INTERRUPT_EVENT_ID,
    INTERRUPT_TYPE,
    REASONING_PIECES,
    RETRY_AFTER_SECONDS,
    SPLIT_UTF8_ANSWER,
    TOOL_CALL_NAME,
    WORKFLOW_CUT,
    WORKFLOW_ERROR_EVENT,
    WORKFLOW_INTERRUPT,
    WORKFLOW_MISSING,
    WORKFLOW_NO_DONE,
    WORKFLOW_NORMAL,
    WORKFLOW_PING,
    WORKFLOW_STALL,
    WORKFLOW_USAGE_TOKEN_COUNT,
    FakeCoze,
    workflow_output,
)
from tests.fakes.upstreams import until

LOG_ID = re.compile(r"\d{14}[0-9A-F]{20}")


@pytest.fixture
async def fake() -> AsyncIterator[FakeCoze]:
    async with FakeCoze() as server:
        yield server


@pytest.fixture
async def http_client() -> AsyncIterator[AsyncHTTPClient]:
    # Our own client so leaked (abandoned) cozepy streams are closed before the test ends.
    client = AsyncHTTPClient()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def coze(fake: FakeCoze, http_client: AsyncHTTPClient) -> AsyncCoze:
    return AsyncCoze(auth=AsyncTokenAuth(fake.token), base_url=fake.base_url, http_client=http_client)


async def collect(coze: AsyncCoze, bot_id: str, **kwargs: object) -> list[ChatEvent]:
    return [
        event
        async for event in coze.chat.stream(
            bot_id=bot_id,
            user_id="user-1",
            additional_messages=[Message.build_user_question_text("10 月 1 日是星期几？")],
            **kwargs,  # type: ignore[arg-type]
        )
    ]


def answer_deltas(events: list[ChatEvent]) -> str:
    return "".join(
        event.message.content
        for event in events
        if event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA and event.message is not None
    )


async def test_normal_chat_stream_yields_coze_event_sequence(coze: AsyncCoze, fake: FakeCoze) -> None:
    events = await collect(coze, BOT_NORMAL)

    names = [event.event for event in events]
    deltas = names.count(ChatEventType.CONVERSATION_MESSAGE_DELTA)
    assert deltas >= 3
    assert names == [
        ChatEventType.CONVERSATION_CHAT_CREATED,
        ChatEventType.CONVERSATION_CHAT_IN_PROGRESS,
        *[ChatEventType.CONVERSATION_MESSAGE_DELTA] * deltas,
        ChatEventType.CONVERSATION_MESSAGE_COMPLETED,
        ChatEventType.CONVERSATION_MESSAGE_COMPLETED,
        ChatEventType.CONVERSATION_CHAT_COMPLETED,
    ]
    assert answer_deltas(events) == DEFAULT_ANSWER
    answer, verbose = events[-3].message, events[-2].message
    assert answer is not None and answer.type == MessageType.ANSWER and answer.content == DEFAULT_ANSWER
    assert verbose is not None and verbose.type == MessageType.VERBOSE
    assert json.loads(verbose.content)["msg_type"] == "generate_answer_finish"
    completed = events[-1].chat
    assert completed is not None and completed.status == ChatStatus.COMPLETED
    assert completed.bot_id == BOT_NORMAL
    assert completed.usage is not None
    assert (completed.usage.input_count, completed.usage.output_count, completed.usage.token_count) == (
        CHAT_USAGE_INPUT_COUNT,
        CHAT_USAGE_OUTPUT_COUNT,
        CHAT_USAGE_TOKEN_COUNT,
    )
    [request] = fake.requests
    assert request.method == "POST" and request.path == "/v3/chat"
    assert request.headers["authorization"] == f"Bearer {fake.token}"
    assert request.json["bot_id"] == BOT_NORMAL and request.json["stream"] is True
    assert events[0].response.logid == request.log_id
    # Written to the end: not a disconnect, and no stream left open.
    assert fake.disconnects == []
    assert fake.open_streams == 0


async def test_conversation_id_query_round_trips(coze: AsyncCoze, fake: FakeCoze) -> None:
    events = await collect(coze, BOT_NORMAL, conversation_id="7381473525342978089")
    fresh = await collect(coze, BOT_NORMAL)

    assert {event.chat.conversation_id for event in events if event.chat} == {"7381473525342978089"}
    assert {event.message.conversation_id for event in events if event.message} == {"7381473525342978089"}
    new_ids = {event.chat.conversation_id for event in fresh if event.chat}
    assert len(new_ids) == 1 and re.fullmatch(r"\d{19}", new_ids.pop())
    assert [request.query["conversation_id"] for request in fake.requests] == ["7381473525342978089", ""]


async def test_wrong_token_gives_4100_with_logid(fake: FakeCoze, http_client: AsyncHTTPClient) -> None:
    coze = AsyncCoze(auth=AsyncTokenAuth("pat_wrong"), base_url=fake.base_url, http_client=http_client)

    with pytest.raises(CozeAPIError) as raised:
        await collect(coze, BOT_NORMAL)

    assert raised.value.code == 4100
    assert raised.value.msg == "authentication is invalid"
    assert raised.value.logid == fake.requests[-1].log_id


@pytest.mark.parametrize(
    ("bot_id", "code"),
    [(BOT_MISSING, 4200), (BOT_BAD_REQUEST, 4000), (BOT_RATE_LIMITED, 4013), (BOT_HTTP_502, 502)],
)
async def test_errors_before_the_stream_raise_coze_api_error(
    coze: AsyncCoze, fake: FakeCoze, bot_id: str, code: int
) -> None:
    with pytest.raises(CozeAPIError) as raised:
        await collect(coze, bot_id)

    assert raised.value.code == code
    assert raised.value.logid == fake.requests[-1].log_id


async def test_rate_limited_and_502_use_real_http_statuses(fake: FakeCoze) -> None:
    headers = {"Authorization": f"Bearer {fake.token}"}
    async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client:
        limited = await client.post("/v3/chat", json={"bot_id": BOT_RATE_LIMITED, "user_id": "u", "stream": True})
        gateway = await client.post("/v3/chat", json={"bot_id": BOT_HTTP_502, "user_id": "u", "stream": True})

    assert limited.status_code == 429 and limited.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
    assert limited.json()["code"] == 4013
    assert gateway.status_code == 502 and gateway.headers["content-type"].startswith("text/html")
    assert gateway.text == "<html>bad gateway</html>"


async def test_error_event_raises_bare_exception(coze: AsyncCoze) -> None:
    with pytest.raises(Exception, match=r'^error event: \{"code":5000,"msg":"internal error"\}$') as raised:
        await collect(coze, BOT_ERROR_EVENT)

    assert type(raised.value) is Exception


async def test_failed_chat_yields_failed_event_with_last_error(coze: AsyncCoze) -> None:
    events = await collect(coze, BOT_FAILED)

    assert events[-1].event == ChatEventType.CONVERSATION_CHAT_FAILED
    failed = events[-1].chat
    assert failed is not None and failed.status == ChatStatus.FAILED
    assert failed.last_error is not None and failed.last_error.code == 5000
    assert failed.last_error.msg == "event interval error"
    assert len(answer_deltas(events)) > 0


async def test_cut_stream_raises_remote_protocol_error(coze: AsyncCoze, fake: FakeCoze) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await collect(coze, BOT_CUT)

    assert fake.disconnects == []  # the fake hung up, not the client


async def test_malformed_stream_raises_invalid_event(coze: AsyncCoze) -> None:
    with pytest.raises(CozeInvalidEventError, match=": ping"):
        await collect(coze, BOT_MALFORMED)


async def test_reasoning_deltas_come_before_the_answer(coze: AsyncCoze) -> None:
    events = await collect(coze, BOT_REASONING)

    deltas = [e.message for e in events if e.event == ChatEventType.CONVERSATION_MESSAGE_DELTA and e.message]
    reasoning = [m for m in deltas if m.reasoning_content]
    assert [m.reasoning_content for m in reasoning] == list(REASONING_PIECES)
    assert all(m.content == "" for m in reasoning)
    assert deltas[: len(reasoning)] == reasoning
    assert answer_deltas(events) == DEFAULT_ANSWER


async def test_verbose_and_unknown_events_keep_the_answer(coze: AsyncCoze) -> None:
    with pytest.warns(UserWarning, match="Unknown MessageType value: knowledge"):
        events = await collect(coze, BOT_VERBOSE_AND_UNKNOWN)

    completed_types = [e.message.type for e in events if e.message and e.event.endswith("completed")]
    assert MessageType.FOLLOW_UP in completed_types and "knowledge" in completed_types
    unknown = [e.unknown for e in events if e.event == ChatEventType.UNKNOWN]
    assert unknown and unknown[0] is not None and unknown[0]["event"] == "conversation.audio.whatever"
    assert answer_deltas(events) == DEFAULT_ANSWER


async def test_completed_only_has_no_deltas(coze: AsyncCoze) -> None:
    events = await collect(coze, BOT_COMPLETED_ONLY)

    assert answer_deltas(events) == ""
    answers = [e.message.content for e in events if e.message and e.message.type == MessageType.ANSWER]
    assert answers == [DEFAULT_ANSWER]


async def test_requires_action_carries_a_tool_call(coze: AsyncCoze) -> None:
    events = await collect(coze, BOT_REQUIRES_ACTION)

    assert events[-1].event == ChatEventType.CONVERSATION_CHAT_REQUIRES_ACTION
    chat = events[-1].chat
    assert chat is not None and chat.required_action is not None
    [tool_call] = chat.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    assert tool_call.function is not None and tool_call.function.name == TOOL_CALL_NAME


async def test_slow_stream_paces_the_deltas(coze: AsyncCoze, fake: FakeCoze) -> None:
    fake.slow_interval = 0.02
    started = time.monotonic()
    events = await collect(coze, BOT_SLOW)

    assert answer_deltas(events) == DEFAULT_ANSWER
    gaps = len(DEFAULT_ANSWER) // 3  # one pause between each pair of 3-character deltas
    assert time.monotonic() - started >= gaps * fake.slow_interval


async def test_no_close_keeps_cozepy_waiting_after_done(coze: AsyncCoze, fake: FakeCoze) -> None:
    fake.no_close_seconds = 0.2
    started = time.monotonic()
    events = await collect(coze, BOT_NO_CLOSE)

    assert events[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED
    # cozepy does not stop at `done`; it waits for the end of the body (spec §2.2).
    assert time.monotonic() - started >= fake.no_close_seconds
    assert fake.disconnects == []


async def test_split_utf8_splits_characters_across_writes(coze: AsyncCoze, fake: FakeCoze) -> None:
    assert answer_deltas(await collect(coze, BOT_SPLIT_UTF8)) == SPLIT_UTF8_ANSWER

    body = {"bot_id": BOT_SPLIT_UTF8, "user_id": "u", "stream": True}
    headers = {"Authorization": f"Bearer {fake.token}"}
    async with (
        httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client,
        client.stream("POST", "/v3/chat", json=body) as response,
    ):
        chunks = [chunk async for chunk in response.aiter_raw()]
    undecodable = 0
    for chunk in chunks:
        try:
            chunk.decode()
        except UnicodeDecodeError:
            undecodable += 1
    assert undecodable >= 2
    assert b"".join(chunks).decode().count("event:conversation.message.delta") >= 2


async def test_non_stream_chat_then_retrieve_list_and_cancel(coze: AsyncCoze, fake: FakeCoze) -> None:
    chat = await coze.chat.create(bot_id=BOT_NORMAL, user_id="user-1")
    assert chat.status == ChatStatus.IN_PROGRESS

    retrieved = await coze.chat.retrieve(conversation_id=chat.conversation_id, chat_id=chat.id)
    messages = await coze.chat.messages.list(conversation_id=chat.conversation_id, chat_id=chat.id)
    # A completed chat cannot be cancelled (DOC-ERR 4104).
    with pytest.raises(CozeAPIError) as not_cancellable:
        await coze.chat.cancel(conversation_id=chat.conversation_id, chat_id=chat.id)

    assert retrieved.status == ChatStatus.COMPLETED and retrieved.bot_id == BOT_NORMAL
    assert [m.type for m in messages] == [MessageType.VERBOSE, MessageType.ANSWER]
    assert messages[1].content == DEFAULT_ANSWER
    assert not_cancellable.value.code == 4104
    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", "/v3/chat"),
        ("POST", "/v3/chat/retrieve"),
        ("GET", "/v3/chat/message/list"),
        ("POST", "/v3/chat/cancel"),
    ]
    assert fake.requests[-1].json == {"conversation_id": chat.conversation_id, "chat_id": chat.id}


async def test_a_chat_whose_client_left_keeps_its_conversation_busy_until_cancelled(
    coze: AsyncCoze, fake: FakeCoze
) -> None:
    # Closing the connection does not stop a Coze chat: the conversation stays busy (4016).
    conversation_id = "7400000000000000077"
    stream = coze.chat.stream(bot_id=BOT_STALL, user_id="user-1", conversation_id=conversation_id)

    async def first_event() -> object:
        return await anext(stream)

    task = asyncio.create_task(first_event())
    await fake.wait_for_requests("/v3/chat")
    await until(lambda: bool(fake.created_chats))
    task.cancel()
    await fake.wait_for_disconnect()
    with pytest.raises(CozeAPIError) as busy:
        await coze.chat.create(bot_id=BOT_NORMAL, user_id="user-1", conversation_id=conversation_id)
    assert busy.value.code == 4016
    (orphan,) = fake.created_chats
    canceled = await coze.chat.cancel(conversation_id=conversation_id, chat_id=orphan.chat_id)
    assert canceled.status == ChatStatus.CANCELED
    # The cancel's answer means the chat has stopped: the conversation takes the next turn.
    chat = await coze.chat.create(bot_id=BOT_NORMAL, user_id="user-1", conversation_id=conversation_id)
    assert chat.conversation_id == conversation_id


async def test_workflow_run_returns_data_debug_url_and_execute_id(coze: AsyncCoze, fake: FakeCoze) -> None:
    result = await coze.workflows.runs.create(workflow_id=WORKFLOW_NORMAL, parameters={"city": "北京"})

    assert result.data is not None and json.loads(result.data) == {"output": {"city": "北京"}}
    assert result.debug_url.startswith("https://www.coze.cn/work_flow?execute_id=")
    assert re.fullmatch(r"\d{19}", result.execute_id or "")
    assert result.usage is not None and result.usage.token_count == WORKFLOW_USAGE_TOKEN_COUNT

    with pytest.raises(CozeAPIError) as raised:
        await coze.workflows.runs.create(workflow_id=WORKFLOW_MISSING)
    assert raised.value.code == 4200


async def test_workflow_stream_yields_messages_then_interrupt_and_resumes(coze: AsyncCoze) -> None:
    normal = [e async for e in coze.workflows.runs.stream(workflow_id=WORKFLOW_NORMAL, parameters={"a": 1})]
    interrupted = [e async for e in coze.workflows.runs.stream(workflow_id=WORKFLOW_INTERRUPT)]

    assert {e.event for e in normal} == {WorkflowEventType.MESSAGE}
    assert normal[-1].message is not None and normal[-1].message.content == workflow_output({"a": 1})
    assert [e.id for e in normal] == list(range(len(normal)))
    assert [e.event for e in interrupted] == [WorkflowEventType.MESSAGE, WorkflowEventType.INTERRUPT]
    interrupt = interrupted[-1].interrupt
    assert interrupt is not None and interrupt.interrupt_data.event_id == INTERRUPT_EVENT_ID
    assert interrupt.interrupt_data.type == INTERRUPT_TYPE

    resumed = [
        e
        async for e in coze.workflows.runs.resume(
            workflow_id=WORKFLOW_INTERRUPT,
            event_id=INTERRUPT_EVENT_ID,
            resume_data="上海",
            interrupt_type=INTERRUPT_TYPE,
        )
    ]
    assert [e.event for e in resumed] == [WorkflowEventType.MESSAGE]
    assert resumed[0].message is not None and "上海" in resumed[0].message.content


@pytest.mark.parametrize(
    ("workflow_id", "events"),
    [
        (WORKFLOW_ERROR_EVENT, [WorkflowEventType.MESSAGE, WorkflowEventType.ERROR]),
        (WORKFLOW_PING, [WorkflowEventType.MESSAGE, WorkflowEventType.UNKNOWN, *[WorkflowEventType.MESSAGE] * 2]),
        (WORKFLOW_NO_DONE, [WorkflowEventType.MESSAGE] * 3),
    ],
)
async def test_workflow_stream_scenarios(coze: AsyncCoze, workflow_id: str, events: list[WorkflowEventType]) -> None:
    received = [e async for e in coze.workflows.runs.stream(workflow_id=workflow_id)]

    assert [e.event for e in received] == events


async def test_workflow_cut_raises_remote_protocol_error(coze: AsyncCoze) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        _ = [e async for e in coze.workflows.runs.stream(workflow_id=WORKFLOW_CUT)]


async def test_raw_wire_format_of_both_grammars(fake: FakeCoze) -> None:
    headers = {"Authorization": f"Bearer {fake.token}"}
    async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client:
        chat = await client.post("/v3/chat?conversation_id=", json={"bot_id": "b", "user_id": "u", "stream": True})
        workflow = await client.post("/v1/workflow/stream_run", json={"workflow_id": "w", "parameters": {}})

    assert chat.headers["content-type"] == "text/event-stream"
    assert chat.text.startswith("event:conversation.chat.created\ndata:{")
    assert chat.text.endswith('event:done\ndata:"[DONE]"\n\n')
    assert workflow.text.startswith("id: 0\nevent: Message\ndata: {")
    assert re.search(r'event: Done\ndata: \{"debug_url":"https://www\.coze\.cn/work_flow\?[^"]+"\}\n\n$', workflow.text)
    log_ids = [request.log_id for request in fake.requests]
    assert all(LOG_ID.fullmatch(log_id) for log_id in log_ids) and len(set(log_ids)) == len(log_ids)
    assert [chat.headers["x-tt-logid"], workflow.headers["x-tt-logid"]] == log_ids


@pytest.mark.parametrize("scenario", [BOT_STALL, WORKFLOW_STALL])
async def test_cancelled_stall_stream_is_recorded_as_disconnect(coze: AsyncCoze, fake: FakeCoze, scenario: str) -> None:
    first_event = asyncio.Event()

    async def consume() -> None:
        if scenario == BOT_STALL:
            stream = coze.chat.stream(bot_id=scenario, user_id="user-1")
        else:
            stream = coze.workflows.runs.stream(workflow_id=scenario)  # type: ignore[assignment]
        async for _ in stream:
            first_event.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_event.wait(), 1.0)
    assert fake.open_streams == 1
    cancelled_at = time.monotonic()
    task.cancel()
    disconnect = await fake.wait_for_disconnect(timeout=1.0)

    assert disconnect.scenario == scenario
    assert disconnect.log_id == fake.requests[-1].log_id
    assert 0 <= disconnect.time - cancelled_at < 1.0
    assert fake.open_streams == 0
    assert task.cancelled()


async def test_wait_for_disconnect_times_out(fake: FakeCoze) -> None:
    with pytest.raises(TimeoutError):
        await fake.wait_for_disconnect(timeout=0.05)
