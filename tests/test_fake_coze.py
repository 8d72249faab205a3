"""Checks that the fake Coze server speaks the wire format the real cozepy 0.20.0 client expects, and (through
raw httpx) the documented shapes cozepy does not send or model."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cozepy import (
    AsyncCoze,
    AsyncHTTPClient,
    AsyncTokenAuth,
    Chat,
    ChatEvent,
    ChatEventType,
    ChatStatus,
    CozeAPIError,
    CozeInvalidEventError,
    Message,
    MessageObjectString,
    MessageType,
    ToolOutput,
    WorkflowEvent,
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
    BOT_TOOLS_CONTINUATION_CREATED,
    BOT_TOOLS_CONTINUATION_CUT,
    BOT_TOOLS_CONTINUATION_FAILED,
    BOT_TOOLS_CONTINUATION_STALL,
    BOT_TOOLS_TWICE,
    BOT_VERBOSE_AND_UNKNOWN,
    CHAT_USAGE_INPUT_COUNT,
    CHAT_USAGE_OUTPUT_COUNT,
    CHAT_USAGE_TOKEN_COUNT,
    CHATFLOW_CUT,
    CHATFLOW_ERROR_EVENT,
    CHATFLOW_FAILED,
    CHATFLOW_MISSING,
    CHATFLOW_NORMAL,
    CHATFLOW_QUESTION,
    CHATFLOW_QUESTION_REQUIRES_ACTION,
    CHATFLOW_STALL,
    DEFAULT_ANSWER,
    INPUT_EVENT_ID,
    INPUT_INTERRUPT_TYPE,
    INPUT_REQUIRED_PARAMETERS,
    INTERRUPT_EVENT_ID,
    INTERRUPT_QUESTION,
    INTERRUPT_TYPE,
    REASONING_PIECES,
    RETRY_AFTER_SECONDS,
    SECOND_TOOL_CALLS,
    SPLIT_UTF8_ANSWER,
    TOOL_CALL_ID,
    TOOL_CALL_NAME,
    WORKFLOW_CUT,
    WORKFLOW_EMPTY_DONE,
    WORKFLOW_ERROR_DEBUG_URL,
    WORKFLOW_ERROR_EVENT,
    WORKFLOW_INPUT_NODE,
    WORKFLOW_INTERRUPT,
    WORKFLOW_MISSING,
    WORKFLOW_NO_DONE,
    WORKFLOW_NODE_IDS,
    WORKFLOW_NORMAL,
    WORKFLOW_PING,
    WORKFLOW_STALL,
    WORKFLOW_USAGE_TOKEN_COUNT,
    FakeCoze,
    ReceivedMessage,
    SubmittedToolOutputs,
    chatflow_answer,
    execute_id_of,
    tool_answer,
    weather_for,
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


async def resume(
    coze: AsyncCoze, workflow_id: str, event_id: str, resume_data: str, interrupt_type: int
) -> list[WorkflowEvent]:
    """The events of a stream_resume, through cozepy."""
    stream = coze.workflows.runs.resume(
        workflow_id=workflow_id, event_id=event_id, resume_data=resume_data, interrupt_type=interrupt_type
    )
    return [event async for event in stream]


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

    resumed = await resume(coze, WORKFLOW_INTERRUPT, INTERRUPT_EVENT_ID, "上海", INTERRUPT_TYPE)
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


# --- helpers for the endpoints below ---

BOT_USER = "7439828073000000001"  # the bot a chatflow runs in (DOC-CHATFLOW: bot_id or app_id)


@pytest.fixture
async def raw(fake: FakeCoze) -> AsyncIterator[httpx.AsyncClient]:
    """A plain httpx client with the fake's token, for what cozepy does not send."""
    async with httpx.AsyncClient(base_url=fake.base_url, headers={"Authorization": f"Bearer {fake.token}"}) as client:
        yield client


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """(event, parsed data) of each event of an SSE body whose data are single-line JSON."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def event_names(events: list[ChatEvent]) -> list[ChatEventType]:
    """The events' names, with each run of message deltas collapsed into one."""
    names: list[ChatEventType] = []
    for event in events:
        if not (names and names[-1] == event.event == ChatEventType.CONVERSATION_MESSAGE_DELTA):
            names.append(event.event)
    return names


async def ask_for_tools(coze: AsyncCoze, bot_id: str, **kwargs: object) -> Chat:
    """Stream a chat with a tool bot; the Chat of its requires_action."""
    events = await collect(coze, bot_id, **kwargs)
    assert events[-1].event == ChatEventType.CONVERSATION_CHAT_REQUIRES_ACTION
    chat = events[-1].chat
    assert chat is not None
    return chat


async def submit(coze: AsyncCoze, chat: Chat, outputs: dict[str, str]) -> list[ChatEvent]:
    """Stream the continuation of ``chat`` after submitting ``outputs`` (tool_call_id -> output)."""
    tool_outputs = [ToolOutput(tool_call_id=call_id, output=output) for call_id, output in outputs.items()]
    stream = coze.chat.submit_tool_outputs_stream(
        conversation_id=chat.conversation_id, chat_id=chat.id, tool_outputs=tool_outputs
    )
    return [event async for event in stream]


def objects(items: list[dict[str, Any]] | str) -> dict[str, Any]:
    """A user message with object_string content (``items`` serialised, or a raw string)."""
    content = items if isinstance(items, str) else json.dumps(items)
    return {"role": "user", "content": content, "content_type": "object_string"}


def text(content: str) -> dict[str, Any]:
    """A user message with text content."""
    return {"role": "user", "content": content, "content_type": "text"}


def chatflow_body(workflow_id: str, question: str = "hi", /, **changes: Any) -> dict[str, Any]:
    """A /v1/workflows/chat body run in BOT_USER, with ``changes`` on top."""
    body = {"workflow_id": workflow_id, "bot_id": BOT_USER, "additional_messages": [text(question)], **changes}
    return {name: value for name, value in body.items() if value is not None}


async def chatflow(coze: AsyncCoze, workflow_id: str, question: str, **kwargs: Any) -> list[ChatEvent]:
    """One chatflow turn through cozepy's workflows.chat.stream, run in BOT_USER."""
    stream = coze.workflows.chat.stream(
        workflow_id=workflow_id,
        bot_id=BOT_USER,
        additional_messages=[Message.build_user_question_text(question)],
        **kwargs,
    )
    return [event async for event in stream]


# --- submit_tool_outputs ---


async def test_streamed_submit_continues_the_chat_from_in_progress_to_the_answer(
    coze: AsyncCoze, fake: FakeCoze
) -> None:
    asked = await ask_for_tools(coze, BOT_REQUIRES_ACTION)

    events = await submit(coze, asked, {TOOL_CALL_ID: "晴，25°C"})

    assert event_names(events) == [
        ChatEventType.CONVERSATION_CHAT_IN_PROGRESS,
        ChatEventType.CONVERSATION_MESSAGE_DELTA,
        ChatEventType.CONVERSATION_MESSAGE_COMPLETED,
        ChatEventType.CONVERSATION_MESSAGE_COMPLETED,
        ChatEventType.CONVERSATION_CHAT_COMPLETED,
    ]
    assert answer_deltas(events) == tool_answer(["晴，25°C"])
    completed = events[-1].chat
    assert completed is not None and (completed.id, completed.conversation_id) == (asked.id, asked.conversation_id)
    assert completed.usage is not None and completed.usage.token_count == CHAT_USAGE_TOKEN_COUNT
    assert fake.submitted_tool_outputs == [
        SubmittedToolOutputs(asked.id, asked.conversation_id, {TOOL_CALL_ID: "晴，25°C"}, stream=True)
    ]
    request = fake.requests[-1]
    assert request.path == "/v3/chat/submit_tool_outputs"
    assert request.query == {"conversation_id": asked.conversation_id, "chat_id": asked.id}
    assert request.json == {"tool_outputs": [{"tool_call_id": TOOL_CALL_ID, "output": "晴，25°C"}], "stream": True}
    assert fake.disconnects == [] and fake.open_streams == 0


@pytest.mark.parametrize(
    ("bot_id", "first_event"),
    [
        (BOT_REQUIRES_ACTION, "conversation.chat.in_progress"),
        # DOC-SUBMIT's example stream begins with chat.created: offered too.
        (BOT_TOOLS_CONTINUATION_CREATED, "conversation.chat.created"),
    ],
)
async def test_continuation_wire_format(coze: AsyncCoze, raw: httpx.AsyncClient, bot_id: str, first_event: str) -> None:
    asked = await ask_for_tools(coze, bot_id)

    response = await raw.post(
        "/v3/chat/submit_tool_outputs",
        params={"conversation_id": asked.conversation_id, "chat_id": asked.id},
        json={"tool_outputs": [{"tool_call_id": TOOL_CALL_ID, "output": "晴"}], "stream": True},
    )

    assert response.headers["content-type"] == "text/event-stream"
    assert response.text.startswith(f"event:{first_event}\ndata:{{")
    assert response.text.endswith('event:done\ndata:"[DONE]"\n\n')
    names = [name for name, _ in parse_sse(response.text)]
    assert names.count("conversation.chat.created") == (first_event == "conversation.chat.created")
    assert names[-3:] == ["conversation.message.completed", "conversation.chat.completed", "done"]
    assert {data["id"] for name, data in parse_sse(response.text) if name.startswith("conversation.chat.")} == {
        asked.id
    }


async def test_a_bot_that_asks_twice_takes_two_rounds_of_outputs(coze: AsyncCoze, fake: FakeCoze) -> None:
    asked = await ask_for_tools(coze, BOT_TOOLS_TWICE)
    first = await submit(coze, asked, {TOOL_CALL_ID: "晴"})

    assert event_names(first) == [
        ChatEventType.CONVERSATION_CHAT_IN_PROGRESS,
        ChatEventType.CONVERSATION_CHAT_REQUIRES_ACTION,
    ]
    again = first[-1].chat
    assert again is not None and again.id == asked.id and again.required_action is not None
    calls = again.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == list(SECOND_TOOL_CALLS)  # type: ignore[union-attr]
    # The first round's call is answered already: only the calls asked now are accepted.
    with pytest.raises(CozeAPIError) as stale:
        await submit(coze, asked, {TOOL_CALL_ID: "晴"})
    assert stale.value.code == 4000

    outputs = {call_id: f"输出 {call_id}" for call_id, _, _ in reversed(SECOND_TOOL_CALLS)}
    second = await submit(coze, asked, outputs)

    assert second[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED
    # The answer takes the outputs in the order the calls were asked, whatever order they came in.
    assert answer_deltas(second) == tool_answer(outputs[call_id] for call_id, _, _ in SECOND_TOOL_CALLS)
    assert [len(s.outputs) for s in fake.submitted_tool_outputs] == [1, 2]


async def test_unstreamed_tool_loop_polls_like_an_unstreamed_chat(coze: AsyncCoze) -> None:
    chat = await coze.chat.create(bot_id=BOT_REQUIRES_ACTION, user_id="user-1")
    asked = await coze.chat.retrieve(conversation_id=chat.conversation_id, chat_id=chat.id)
    calls = await coze.chat.messages.list(conversation_id=chat.conversation_id, chat_id=chat.id)

    assert chat.status == ChatStatus.IN_PROGRESS
    assert asked.status == ChatStatus.REQUIRES_ACTION and asked.required_action is not None
    assert [m.type for m in calls] == [MessageType.FUNCTION_CALL]
    assert json.loads(calls[0].content)["name"] == TOOL_CALL_NAME

    continued = await coze.chat.submit_tool_outputs(
        conversation_id=chat.conversation_id,
        chat_id=chat.id,
        tool_outputs=[ToolOutput(tool_call_id=TOOL_CALL_ID, output="晴")],
    )
    done = await coze.chat.retrieve(conversation_id=chat.conversation_id, chat_id=chat.id)
    messages = await coze.chat.messages.list(conversation_id=chat.conversation_id, chat_id=chat.id)

    assert continued.status == ChatStatus.IN_PROGRESS and continued.id == chat.id
    assert done.status == ChatStatus.COMPLETED
    assert [m.content for m in messages if m.type == MessageType.ANSWER] == [tool_answer(["晴"])]


async def test_submit_tool_outputs_refusals(coze: AsyncCoze, fake: FakeCoze, raw: httpx.AsyncClient) -> None:
    asked = await ask_for_tools(coze, BOT_REQUIRES_ACTION)
    unsaved = await ask_for_tools(coze, BOT_REQUIRES_ACTION, auto_save_history=False)
    completed = (await collect(coze, BOT_NORMAL))[-1].chat
    assert completed is not None
    good = [{"tool_call_id": TOOL_CALL_ID, "output": "晴"}]
    cases: list[tuple[str, str, Any, int]] = [
        ("7400000000000000998", asked.conversation_id, good, 4001),  # no such chat
        (asked.id, "7400000000000000999", good, 4002),  # not the chat's conversation
        (asked.id, asked.conversation_id, [{"tool_call_id": "call_other", "output": "晴"}], 4000),  # not asked
        (asked.id, asked.conversation_id, [*good, *good], 4000),  # one call answered twice
        (asked.id, asked.conversation_id, [], 4000),
        (asked.id, asked.conversation_id, [{"tool_call_id": TOOL_CALL_ID}], 4000),  # no output
        (asked.id, asked.conversation_id, [{"tool_call_id": TOOL_CALL_ID, "output": {"t": 25}}], 4000),
        (unsaved.id, unsaved.conversation_id, good, 5000),  # DOC-SUBMIT: auto_save_history=false
        (completed.id, completed.conversation_id, good, 4000),  # asks for nothing
    ]

    for chat_id, conversation_id, outputs, code in cases:
        response = await raw.post(
            "/v3/chat/submit_tool_outputs",
            params={"conversation_id": conversation_id, "chat_id": chat_id},
            json={"tool_outputs": outputs, "stream": True},
        )
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["code"] == code, (chat_id, outputs)

    assert fake.submitted_tool_outputs == []
    # Still waiting: the right outputs are taken afterwards.
    assert answer_deltas(await submit(coze, asked, {TOOL_CALL_ID: "晴"})) == tool_answer(["晴"])


async def test_continuation_cut_and_failure(coze: AsyncCoze) -> None:
    cut_chat = await ask_for_tools(coze, BOT_TOOLS_CONTINUATION_CUT)
    failing = await ask_for_tools(coze, BOT_TOOLS_CONTINUATION_FAILED)

    with pytest.raises(httpx.RemoteProtocolError):
        await submit(coze, cut_chat, {TOOL_CALL_ID: "晴"})
    failed = await submit(coze, failing, {TOOL_CALL_ID: "晴"})

    assert event_names(failed) == [
        ChatEventType.CONVERSATION_CHAT_IN_PROGRESS,
        ChatEventType.CONVERSATION_MESSAGE_DELTA,
        ChatEventType.CONVERSATION_CHAT_FAILED,
    ]
    chat = failed[-1].chat
    assert chat is not None and chat.last_error is not None and chat.last_error.code == 5000
    retrieved = await coze.chat.retrieve(conversation_id=failing.conversation_id, chat_id=failing.id)
    assert retrieved.status == ChatStatus.FAILED


async def test_a_running_continuation_keeps_its_conversation_busy_until_cancelled(
    coze: AsyncCoze, fake: FakeCoze
) -> None:
    asked = await ask_for_tools(coze, BOT_TOOLS_CONTINUATION_STALL)
    stream = coze.chat.submit_tool_outputs_stream(
        conversation_id=asked.conversation_id,
        chat_id=asked.id,
        tool_outputs=[ToolOutput(tool_call_id=TOOL_CALL_ID, output="晴")],
    )
    first = await anext(stream)
    assert first.event == ChatEventType.CONVERSATION_CHAT_IN_PROGRESS

    with pytest.raises(CozeAPIError) as busy:
        await coze.chat.create(bot_id=BOT_NORMAL, user_id="user-1", conversation_id=asked.conversation_id)
    canceled = await coze.chat.cancel(conversation_id=asked.conversation_id, chat_id=asked.id)
    chat = await coze.chat.create(bot_id=BOT_NORMAL, user_id="user-1", conversation_id=asked.conversation_id)

    assert busy.value.code == 4016
    assert canceled.status == ChatStatus.CANCELED and fake.cancelled_chats == [asked.id]
    assert chat.conversation_id == asked.conversation_id
    with pytest.raises(CozeAPIError) as not_cancellable:
        await coze.chat.cancel(conversation_id=asked.conversation_id, chat_id=asked.id)
    assert not_cancellable.value.code == 4104


# --- files and object_string messages ---


async def test_upload_answers_the_file_object_and_keeps_the_exact_bytes(
    coze: AsyncCoze, fake: FakeCoze, raw: httpx.AsyncClient
) -> None:
    # Every byte value, and lines that look like a multipart boundary.
    data = bytes(range(256)) * 3 + b"\r\n--boundary\r\n\r\n"
    uploaded = await coze.files.upload(file=("photo.png", data))
    response = await raw.post("/v1/files/upload", files={"file": ("report.pdf", b"%PDF-1.7", "application/pdf")})

    assert re.fullmatch(r"\d{19}", uploaded.id)
    assert (uploaded.bytes, uploaded.file_name) == (len(data), "photo.png")
    assert abs((uploaded.created_at or 0) - time.time()) < 60
    stored = fake.uploaded_files[uploaded.id]
    assert (stored.data, stored.file_name, stored.content_type) == (data, "photo.png", "image/png")
    body = response.json()
    assert (body["code"], body["msg"]) == (0, "")
    assert set(body["data"]) == {"id", "bytes", "created_at", "file_name"}
    pdf = fake.uploaded_files[body["data"]["id"]]
    assert (pdf.data, pdf.content_type, body["data"]["bytes"]) == (b"%PDF-1.7", "application/pdf", 8)
    assert fake.requests[-1].json is None and fake.requests[-1].path == "/v1/files/upload"


async def test_upload_refusals_use_coze_file_codes(coze: AsyncCoze, fake: FakeCoze, raw: httpx.AsyncClient) -> None:
    fake.max_upload_bytes = 10
    answers = [
        await raw.post("/v1/files/upload", json={"file": "not multipart"}),
        await raw.post("/v1/files/upload", data={"name": "a.png"}, files={"other": ("a.png", b"x")}),
        await raw.post("/v1/files/upload", files={"file": ("empty.png", b"")}),
        await raw.post("/v1/files/upload", files=[("file", ("a.png", b"a")), ("file", ("b.png", b"b"))]),
        await raw.post("/v1/files/upload", files={"file": ("big.png", b"x" * 11)}),
    ]
    with pytest.raises(CozeAPIError) as too_large:
        await coze.files.upload(file=("big.png", b"x" * 11))

    # DOC-ERR: 4300 no file (or not multipart/form-data), 4301 more than one, 4302 too large.
    assert [answer.json()["code"] for answer in answers] == [4300, 4300, 4300, 4301, 4302]
    assert too_large.value.code == 4302
    assert fake.uploaded_files == {}
    assert (await coze.files.upload(file=("ok.png", b"x" * 10))).bytes == 10


async def test_object_string_messages_are_recorded_parsed(coze: AsyncCoze, fake: FakeCoze) -> None:
    image = await coze.files.upload(file=("cat.png", b"\x89PNG\r\n"))
    question = Message.build_user_question_objects(
        [
            MessageObjectString.build_text("这是什么？"),
            MessageObjectString.build_image(file_id=image.id),
            MessageObjectString.build_file(file_url="https://example.com/a.pdf"),
        ]
    )

    events = [e async for e in coze.chat.stream(bot_id=BOT_NORMAL, user_id="u", additional_messages=[question])]

    assert answer_deltas(events) == DEFAULT_ANSWER
    [received] = fake.received_chats
    assert (received.path, received.scenario, received.chat_id) == ("/v3/chat", BOT_NORMAL, events[0].chat.id)  # type: ignore[union-attr]
    [message] = received.messages
    assert (message.role, message.type, message.content_type) == ("user", "question", "object_string")
    # cozepy sends every unset field of an item as null.
    assert message.parts == (
        {"type": "text", "text": "这是什么？", "file_id": None, "file_url": None},
        {"type": "image", "text": None, "file_id": image.id, "file_url": None},
        {"type": "file", "text": None, "file_id": None, "file_url": "https://example.com/a.pdf"},
    )


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param(
            [objects([{"type": "text", "text": "看"}, {"type": "image", "file_id": "7400"}])], id="unknown id"
        ),
        pytest.param([objects([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])], id="two texts"),
        pytest.param([objects([{"type": "text", "text": "only text"}])], id="text alone"),
        pytest.param([objects([{"type": "image", "file_url": "https://example.com/a.png"}])], id="image alone"),
        pytest.param([objects([{"type": "video", "file_url": "https://example.com/a.mp4"}])], id="unknown type"),
        pytest.param([objects([{"type": "image"}]), text("看图")], id="image without a file"),
        pytest.param([objects("not json")], id="not JSON"),
    ],
)
async def test_object_string_messages_coze_refuses(
    fake: FakeCoze, raw: httpx.AsyncClient, messages: list[dict[str, Any]]
) -> None:
    body = {"bot_id": BOT_NORMAL, "user_id": "u", "stream": True, "additional_messages": messages}

    response = await raw.post("/v3/chat", json=body)

    assert response.json()["code"] == 4000
    assert fake.received_chats == [] and fake.created_chats == []


async def test_an_image_next_to_a_text_message_is_taken(fake: FakeCoze, raw: httpx.AsyncClient) -> None:
    image = [{"type": "image", "file_url": "https://example.com/a.png"}]
    messages = [objects(image), text("这张图里有什么？")]

    response = await raw.post(
        "/v3/chat", json={"bot_id": BOT_NORMAL, "user_id": "u", "stream": True, "additional_messages": messages}
    )

    assert response.headers["content-type"] == "text/event-stream"
    [received] = fake.received_chats
    assert received.messages == (
        ReceivedMessage("user", "", "object_string", json.dumps(image), tuple(image)),
        ReceivedMessage("user", "", "text", "这张图里有什么？", None),
    )


# --- request options ---


async def test_chat_options_are_recorded(coze: AsyncCoze, fake: FakeCoze, raw: httpx.AsyncClient) -> None:
    options = {
        "auto_save_history": True,
        "extra_params": {"latitude": "39.9800718", "longitude": "116.309314"},
        "shortcut_command": {"command_id": "7374633552917479450", "parameters": {"city": "[]"}},
        "parameters": {"user": [{"name": "George", "age": 3}]},
        "custom_variables": {"name": "小明"},
    }
    await raw.post(
        "/v3/chat", json={"bot_id": BOT_NORMAL, "user_id": "u", "stream": True, "meta_data": None, **options}
    )
    await collect(coze, BOT_NORMAL, auto_save_history=False, parameters={"k": 1})

    # A null (meta_data) counts as unset.
    assert [chat.options for chat in fake.received_chats] == [
        options,
        {"auto_save_history": False, "parameters": {"k": 1}},
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("auto_save_history", "true"),
        ("extra_params", {"latitude": 39.98}),
        ("shortcut_command", {"parameters": {}}),
        ("shortcut_command", "7374633552917479450"),
        ("parameters", "user=George"),
        ("custom_variables", ["小明"]),
        ("enable_card", 1),
    ],
)
async def test_chat_options_of_the_wrong_type_are_refused(
    fake: FakeCoze, raw: httpx.AsyncClient, name: str, value: Any
) -> None:
    response = await raw.post("/v3/chat", json={"bot_id": BOT_NORMAL, "user_id": "u", "stream": True, name: value})

    assert response.json()["code"] == 4000 and name in response.json()["msg"]
    assert fake.received_chats == [] and fake.created_chats == []


@pytest.mark.parametrize("path", ["/v1/workflow/run", "/v1/workflow/stream_run"])
async def test_workflow_options_are_recorded(fake: FakeCoze, raw: httpx.AsyncClient, path: str) -> None:
    options = {
        "workflow_version": "v0.0.5",
        "connector_id": "1024",
        "ext": {"latitude": "39.9042", "longitude": "116.4074", "user_id": "123456789"},
        "bot_id": "7379462189365198898",
    }

    response = await raw.post(path, json={"workflow_id": WORKFLOW_NORMAL, "parameters": {"a": 1}, **options})

    [run] = fake.received_workflow_runs
    assert (run.path, run.workflow_id, run.parameters, run.options) == (path, WORKFLOW_NORMAL, {"a": 1}, options)
    assert f"execute_id={run.execute_id}&" in response.text


@pytest.mark.parametrize(
    ("name", "value"),
    [("workflow_version", 5), ("connector_id", 1024), ("ext", {"latitude": 39.9042}), ("ext", "latitude=39.9")],
)
@pytest.mark.parametrize("path", ["/v1/workflow/run", "/v1/workflow/stream_run", "/v1/workflows/chat"])
async def test_workflow_options_of_the_wrong_type_are_refused(
    fake: FakeCoze, raw: httpx.AsyncClient, path: str, name: str, value: Any
) -> None:
    response = await raw.post(path, json=chatflow_body(WORKFLOW_NORMAL, **{name: value}))

    assert response.json()["code"] == 4000 and name in response.json()["msg"]
    assert fake.received_workflow_runs == [] and fake.received_chats == []


# --- chatflows (/v1/workflows/chat) ---


async def test_chatflow_turns_continue_their_conversation(coze: AsyncCoze, fake: FakeCoze) -> None:
    first = await chatflow(coze, CHATFLOW_NORMAL, "你好", parameters={"user_name": "George"}, ext={"user_id": "u-1"})
    conversation_id = first[0].chat.conversation_id  # type: ignore[union-attr]
    second = await chatflow(coze, CHATFLOW_NORMAL, "再说一遍", conversation_id=conversation_id)

    for events in (first, second):
        assert event_names(events) == [
            ChatEventType.CONVERSATION_CHAT_CREATED,
            ChatEventType.CONVERSATION_CHAT_IN_PROGRESS,
            ChatEventType.CONVERSATION_MESSAGE_DELTA,
            ChatEventType.CONVERSATION_MESSAGE_COMPLETED,
            ChatEventType.CONVERSATION_MESSAGE_COMPLETED,
            ChatEventType.CONVERSATION_CHAT_COMPLETED,
        ]
        verbose = events[-2].message
        assert verbose is not None and json.loads(verbose.content)["msg_type"] == "generate_answer_finish"
        completed = events[-1].chat
        assert completed is not None and completed.usage is not None
        assert completed.usage.token_count == CHAT_USAGE_TOKEN_COUNT
        assert {e.chat.conversation_id for e in events if e.chat} == {conversation_id}
    assert re.fullmatch(r"\d{19}", conversation_id)
    assert answer_deltas(first) == chatflow_answer(1, "你好")
    assert answer_deltas(second) == chatflow_answer(2, "再说一遍")
    assert fake.conversation_histories[conversation_id] == [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": chatflow_answer(1, "你好")},
        {"role": "user", "content": "再说一遍"},
        {"role": "assistant", "content": chatflow_answer(2, "再说一遍")},
    ]
    assert [(c.path, c.scenario, c.conversation_id) for c in fake.received_chats] == [
        ("/v1/workflows/chat", CHATFLOW_NORMAL, conversation_id)
    ] * 2
    assert fake.received_chats[0].options == {
        "bot_id": BOT_USER,
        "parameters": {"user_name": "George"},
        "ext": {"user_id": "u-1"},
    }
    assert fake.requests[-1].json["conversation_id"] == conversation_id  # cozepy sends it in the body
    assert fake.created_chats == []  # /v3/chat's record only


async def test_chatflow_wire_format(fake: FakeCoze, raw: httpx.AsyncClient) -> None:
    body = chatflow_body(CHATFLOW_NORMAL, "你好", bot_id=None, app_id="7439828073")
    first = await raw.post("/v1/workflows/chat", json=body)
    events = parse_sse(first.text)
    conversation_id = events[0][1]["conversation_id"]
    # STUDIO also takes the conversation from the query.
    second = await raw.post("/v1/workflows/chat", params={"conversation_id": conversation_id}, json=body)

    assert first.headers["content-type"] == "text/event-stream"
    # §6.3: a space after each colon; chat objects with section_id and no bot_id.
    assert first.text.startswith("event: conversation.chat.created\ndata: {")
    assert [name for name, _ in events][-2:] == ["conversation.chat.completed", "done"]
    created = events[0][1]
    assert "bot_id" not in created and created["section_id"] == conversation_id
    [run] = [data for name, data in events if name == "done"]
    assert re.fullmatch(
        r"https://www\.coze\.cn/work_flow\?execute_id=\d{19}&space_id=\d+&workflow_id=chatflow-normal", run["debug_url"]
    )
    assert parse_sse(second.text)[0][1]["conversation_id"] == conversation_id
    assert "第 2 轮" in second.text


@pytest.mark.parametrize("workflow_id", [CHATFLOW_QUESTION, CHATFLOW_QUESTION_REQUIRES_ACTION])
async def test_chatflow_question_node_ends_the_turn_and_the_next_turn_answers_it(
    coze: AsyncCoze, fake: FakeCoze, raw: httpx.AsyncClient, workflow_id: str
) -> None:
    asking = await raw.post("/v1/workflows/chat", json=chatflow_body(workflow_id, "查天气"))
    events = parse_sse(asking.text)
    conversation_id = events[0][1]["conversation_id"]

    names = [name for name, _ in events]
    [question] = [
        data for name, data in events if name == "conversation.message.completed" and data["type"] == "answer"
    ]
    assert question["content"] == INTERRUPT_QUESTION
    assert (
        "".join(data["content"] for name, data in events if name == "conversation.message.delta") == INTERRUPT_QUESTION
    )
    assert names[-1] == "done" and "debug_url" in events[-1][1]
    assert "conversation.chat.completed" not in names
    if workflow_id == CHATFLOW_QUESTION:
        # DOC-CHATFLOW's example: the interrupt is a verbose message, then a finish with finish_reason 1.
        verbose = [json.loads(data["content"]) for name, data in events if data.get("type") == "verbose"]
        assert [v["msg_type"] for v in verbose] == ["interrupt", "generate_answer_finish"]
        assert json.loads(verbose[1]["data"])["finish_reason"] == 1
        assert "conversation.chat.requires_action" not in names
    else:
        # STUDIO: chat.requires_action, without required_action.
        [waiting] = [data for name, data in events if name == "conversation.chat.requires_action"]
        assert waiting["status"] == "requires_action" and "required_action" not in waiting
        assert re.fullmatch(r"\d{19}", waiting["execute_id"])
        assert names[-2:] == ["conversation.chat.requires_action", "done"]

    # The next turn in the conversation is the reply; cozepy reads it as a chat.
    reply = await chatflow(coze, workflow_id, "上海", conversation_id=conversation_id)
    assert answer_deltas(reply) == weather_for("上海")
    assert reply[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED
    # And cozepy reads the question turn too.
    again = await chatflow(coze, workflow_id, "查天气")
    assert answer_deltas(again) == INTERRUPT_QUESTION


async def test_chatflow_faults(coze: AsyncCoze, fake: FakeCoze, raw: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await chatflow(coze, CHATFLOW_CUT, "你好")
    with pytest.raises(
        Exception, match=r'^error event: \{"code":"5000","msg":"workflow node failed","debug_url":'
    ) as error:
        await chatflow(coze, CHATFLOW_ERROR_EVENT, "你好")
    assert type(error.value) is Exception
    with pytest.raises(CozeAPIError) as missing:
        await chatflow(coze, CHATFLOW_MISSING, "你好")
    assert missing.value.code == 4200
    failed = await raw.post("/v1/workflows/chat", json=chatflow_body(CHATFLOW_FAILED))
    # DOC-CHATFLOW's failure example, verbatim: not a Chat object (code is a string).
    assert failed.text == 'event: conversation.chat.failed\ndata: {"code":"720702204","msg":"会话名不存在"}\n\n'


async def test_a_running_chatflow_keeps_its_conversation_busy(
    coze: AsyncCoze, fake: FakeCoze, raw: httpx.AsyncClient
) -> None:
    stream = coze.workflows.chat.stream(
        workflow_id=CHATFLOW_STALL, bot_id=BOT_USER, additional_messages=[Message.build_user_question_text("你好")]
    )
    created = await anext(stream)
    assert created.chat is not None
    conversation_id, chat_id = created.chat.conversation_id, created.chat.id

    with pytest.raises(CozeAPIError) as busy:
        await chatflow(coze, CHATFLOW_NORMAL, "再来", conversation_id=conversation_id)
    canceled = await coze.chat.cancel(conversation_id=conversation_id, chat_id=chat_id)
    after = await chatflow(coze, CHATFLOW_NORMAL, "再来", conversation_id=conversation_id)

    assert busy.value.code == 4016
    assert canceled.status == ChatStatus.CANCELED
    assert after[-1].event == ChatEventType.CONVERSATION_CHAT_COMPLETED


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"bot_id": None}, 4000),  # neither app_id nor bot_id
        ({"app_id": "7439828073"}, 4000),  # both
        ({"additional_messages": []}, 4000),
        ({"additional_messages": [{"role": "assistant", "content": "hi", "content_type": "text"}]}, 4000),
        ({"additional_messages": [text("hi")] * 51}, 4004),
        ({"parameters": "user_name=George"}, 4000),
        ({"workflow_id": ""}, 4000),
    ],
)
async def test_chatflow_requests_coze_refuses(
    fake: FakeCoze, raw: httpx.AsyncClient, changes: dict[str, Any], code: int
) -> None:
    response = await raw.post("/v1/workflows/chat", json=chatflow_body(CHATFLOW_NORMAL, **changes))

    assert response.json()["code"] == code
    assert fake.received_chats == []


# --- workflows: interrupts with required_parameters, execute_id, debug_url ---


async def test_input_node_interrupt_carries_required_parameters(
    coze: AsyncCoze, fake: FakeCoze, raw: httpx.AsyncClient
) -> None:
    run = (await raw.post("/v1/workflow/run", json={"workflow_id": WORKFLOW_INPUT_NODE})).json()
    stream = await raw.post("/v1/workflow/stream_run", json={"workflow_id": WORKFLOW_INPUT_NODE})
    events = parse_sse(stream.text)

    assert (run["code"], run["data"]) == (0, "")
    interrupt_data = run["interrupt_data"]
    assert (interrupt_data["event_id"], interrupt_data["type"]) == (INPUT_EVENT_ID, INPUT_INTERRUPT_TYPE)
    assert interrupt_data["required_parameters"] == INPUT_REQUIRED_PARAMETERS
    assert {field["name"] for field in json.loads(json.loads(interrupt_data["data"])["content"])} == set(
        INPUT_REQUIRED_PARAMETERS
    )
    # The run's execute_id is what the interrupt's event_id begins with, and is in its debug_url.
    assert run["execute_id"] == execute_id_of(INPUT_EVENT_ID)
    assert f"execute_id={run['execute_id']}&" in run["debug_url"]
    assert [name for name, _ in events] == ["Interrupt", "Done"]
    assert stream.text.startswith("id: 0\nevent: Interrupt\ndata: {")
    streamed = events[0][1]
    assert streamed["interrupt_data"] == interrupt_data
    assert f"execute_id={execute_id_of(INPUT_EVENT_ID)}&" in streamed["debug_url"]

    parsed = [e async for e in coze.workflows.runs.stream(workflow_id=WORKFLOW_INPUT_NODE)]
    assert [e.event for e in parsed] == [WorkflowEventType.INTERRUPT]
    assert parsed[0].interrupt is not None and parsed[0].interrupt.interrupt_data.type == INPUT_INTERRUPT_TYPE
    resumed = await resume(
        coze, WORKFLOW_INPUT_NODE, INPUT_EVENT_ID, '{"img": "7400000000000000001"}', INPUT_INTERRUPT_TYPE
    )
    assert [e.event for e in resumed] == [WorkflowEventType.MESSAGE]


async def test_done_carries_the_runs_debug_url_or_nothing(fake: FakeCoze, raw: httpx.AsyncClient) -> None:
    normal = await raw.post("/v1/workflow/stream_run", json={"workflow_id": WORKFLOW_NORMAL})
    empty = await raw.post("/v1/workflow/stream_run", json={"workflow_id": WORKFLOW_EMPTY_DONE})

    run = fake.received_workflow_runs[0]
    assert parse_sse(normal.text)[-1] == ("Done", {"debug_url": re.search(r"https://[^\"]+", normal.text)[0]})  # type: ignore[index]
    assert f"execute_id={run.execute_id}&" in parse_sse(normal.text)[-1][1]["debug_url"]
    assert empty.text.endswith("event: Done\ndata: {}\n\n")
    assert [name for name, _ in parse_sse(empty.text)] == ["Message"] * 3 + ["Done"]


async def test_node_ids_and_error_debug_url(coze: AsyncCoze, raw: httpx.AsyncClient) -> None:
    nodes = await raw.post("/v1/workflow/stream_run", json={"workflow_id": WORKFLOW_NODE_IDS})
    error = await raw.post("/v1/workflow/stream_run", json={"workflow_id": WORKFLOW_ERROR_DEBUG_URL})

    messages = [data for name, data in parse_sse(nodes.text) if name == "Message"]
    assert [(m["node_title"], m["node_type"], m["node_id"]) for m in messages] == [
        ("Message", "Message", "135279"),
        ("Message", "Message", "135279"),
        ("End", "End", "900001"),
    ]
    # One node_execute_uuid per node execution, shared by its packets.
    assert messages[0]["node_execute_uuid"] == messages[1]["node_execute_uuid"] != messages[2]["node_execute_uuid"]
    [data] = [data for name, data in parse_sse(error.text) if name == "Error"]
    assert data["error_code"] == 5000 and data["debug_url"].startswith("https://www.coze.cn/work_flow?execute_id=")
    # cozepy reads both.
    assert {e.event for e in [e async for e in coze.workflows.runs.stream(workflow_id=WORKFLOW_NODE_IDS)]} == {
        WorkflowEventType.MESSAGE
    }
    received = [e.event async for e in coze.workflows.runs.stream(workflow_id=WORKFLOW_ERROR_DEBUG_URL)]
    assert received == [WorkflowEventType.MESSAGE, WorkflowEventType.ERROR]
