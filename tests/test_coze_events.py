"""The rules that turn Coze's stream events into provider events, on lists of parsed events: no HTTP server.

The streams are Coze's own examples (/work/shared/docs/coze-wire.md §2.4, §3.2: DOC-CHAT and
DOC-WF) and the fake's scenarios in their smallest form; the same rules run end to end in
tests/test_coze_chat.py and tests/test_coze_workflow.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest

from providers.base import (
    ChatEvent,
    ChatFinished,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    Usage,
    WorkflowInterrupt,
    WorkflowNodeEvent,
)
from providers.coze.events import ChatTurn, WorkflowRun
from providers.errors import (
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from providers.sse import ServerSentEvent

CHAT_ID = "7382159487131697202"
CONVERSATION_ID = "7381473525342978089"
ANSWER_ID = "7382159494123470858"
LOG_ID = "20241210152726467C48D89D6DB2AB12CD"


def event(name: str, data: Any, event_id: str = "") -> ServerSentEvent:
    """One parsed SSE event; ``data`` is sent as JSON unless it is a string already."""
    return ServerSentEvent(name, data if isinstance(data, str) else json.dumps(data, ensure_ascii=False), event_id)


def chat(status: str, **fields: Any) -> dict[str, Any]:
    """A Chat object as Coze sends it."""
    usage = {"token_count": 633, "output_count": 19, "input_count": 614} if status != "in_progress" else None
    return {"id": CHAT_ID, "conversation_id": CONVERSATION_ID, "status": status, "usage": usage, **fields}


def message(message_type: str, content: str, message_id: str = ANSWER_ID, **fields: Any) -> dict[str, Any]:
    """An assistant Message object as Coze sends it."""
    return {
        "id": message_id,
        "conversation_id": CONVERSATION_ID,
        "role": "assistant",
        "type": message_type,
        "content": content,
        "content_type": "text",
        "chat_id": CHAT_ID,
        **fields,
    }


def delta(content: str, **fields: Any) -> ServerSentEvent:
    return event("conversation.message.delta", message("answer", content, **fields))


CREATED = event("conversation.chat.created", chat("created"))
IN_PROGRESS = event("conversation.chat.in_progress", chat("in_progress"))
COMPLETED = event("conversation.chat.completed", chat("completed"))
DONE = event("done", '"[DONE]"')
VERBOSE = event(
    "conversation.message.completed",
    message("verbose", '{"msg_type":"generate_answer_finish","data":"","from_module":null,"from_unit":null}', "v1"),
)
FINISHED = ChatFinished(
    FinishReason.STOP,
    Usage(input_tokens=614, output_tokens=19, total_tokens=633),
    conversation_id=CONVERSATION_ID,
    chat_id=CHAT_ID,
)


def read_chat(sse_events: Iterable[ServerSentEvent], turn: ChatTurn | None = None) -> list[ChatEvent]:
    """What the relay yields for a stream: every event's provider events, until the turn ends; a cut raises."""
    turn = turn if turn is not None else ChatTurn(log_id=LOG_ID)
    provided: list[ChatEvent] = []
    for sse in sse_events:
        provided.extend(turn.read(sse))
        if turn.ended:
            return provided
    raise turn.cut()


# --- chat: what a stream yields -------------------------------------------------------------------


def test_coze_documented_stream_yields_each_delta_then_the_finish_with_usage_and_ids() -> None:
    # DOC-CHAT's "基础问答" example, verbose message included.
    stream = [
        CREATED,
        IN_PROGRESS,
        delta("2"),
        delta("0"),
        delta("星期三"),
        delta("。"),
        event("conversation.message.completed", message("answer", "2024 年 10 月 1 日是星期三。")),
        VERBOSE,
        COMPLETED,
        DONE,
    ]
    turn = ChatTurn()
    assert read_chat(stream, turn) == [TextDelta("2"), TextDelta("0"), TextDelta("星期三"), TextDelta("。"), FINISHED]
    assert turn.ended
    assert (turn.conversation_id, turn.chat_id) == (CONVERSATION_ID, CHAT_ID)


def test_an_answer_that_arrives_whole_is_yielded_once_and_one_that_streamed_is_not_repeated() -> None:
    whole = event("conversation.message.completed", message("answer", "整段回答", "m-whole"))
    streamed = event("conversation.message.completed", message("answer", "分段", "m-streamed"))
    events = read_chat(
        [CREATED, delta("分", id="m-streamed"), delta("段", id="m-streamed"), streamed, whole, COMPLETED]
    )
    assert events == [TextDelta("分"), TextDelta("段"), TextDelta("整段回答"), FINISHED]


def test_reasoning_and_text_of_one_delta_come_reasoning_first() -> None:
    events = read_chat(
        [
            CREATED,
            delta("", reasoning_content="先确定日期，"),
            delta("是", reasoning_content="再推算。"),
            delta("星期三"),
            COMPLETED,
        ]
    )
    assert events == [
        ReasoningDelta("先确定日期，"),
        ReasoningDelta("再推算。"),
        TextDelta("是"),
        TextDelta("星期三"),
        FINISHED,
    ]


@pytest.mark.parametrize(
    "sse",
    [
        event("conversation.message.delta", message("function_call", '{"name":"get_weather"}')),
        event("conversation.message.delta", message("knowledge", "国庆节")),
        delta(""),
        event("conversation.message.completed", message("tool_response", "晴")),
        event("conversation.message.completed", message("answer", "")),
        VERBOSE,
        IN_PROGRESS,
        event("conversation.audio.delta", {"id": "a1"}),
        event("some.future.event", "not even json"),
        DONE,
    ],
    ids=lambda sse: sse.event,
)
def test_events_that_are_not_answer_text_yield_nothing_and_end_nothing(sse: ServerSentEvent) -> None:
    turn = ChatTurn()
    assert turn.read(sse) == ()
    assert not turn.ended


def test_follow_ups_go_to_the_finish_never_to_the_answer() -> None:
    follow_ups = [
        event("conversation.message.completed", message("follow_up", question, f"f{index}"))
        for index, question in enumerate(("国庆节放几天假？", "有哪些习俗？"))
    ]
    events = read_chat([CREATED, delta("答"), VERBOSE, *follow_ups, COMPLETED])
    assert events[:-1] == [TextDelta("答")]
    finished = events[-1]
    assert isinstance(finished, ChatFinished)
    assert finished.follow_ups == ("国庆节放几天假？", "有哪些习俗？")


WEATHER_ARGS = '{"city":"北京"}'


def test_requires_action_ends_the_turn_with_the_tool_calls_to_answer() -> None:
    action = {
        "type": "submit_tool_outputs",
        "submit_tool_outputs": {
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"北京"}'},
                },
                {"id": "call_2", "type": "reply_message", "function": None},
            ]
        },
    }
    turn = ChatTurn()
    events = read_chat(
        [CREATED, event("conversation.chat.requires_action", chat("requires_action", required_action=action))], turn
    )
    (finished,) = events
    assert isinstance(finished, ChatFinished)
    assert finished.finish_reason == FinishReason.TOOL_CALLS
    assert finished.tool_calls == (
        ToolCall("call_1", "function", "get_weather", WEATHER_ARGS),
        ToolCall("call_2", "reply_message", "", ""),
    )
    assert (finished.conversation_id, finished.chat_id) == (CONVERSATION_ID, CHAT_ID)
    assert turn.ended, "a chat waiting for tool outputs has nothing to cancel"


def test_nothing_after_the_event_that_ends_the_turn_is_read() -> None:
    turn = ChatTurn()
    assert read_chat([CREATED, COMPLETED, delta("迟到"), event("error", {"code": 5000, "msg": "x"})], turn) == [
        FINISHED
    ]


def test_a_continuation_stream_without_chat_created_keeps_the_ids_it_continues() -> None:
    # submit_tool_outputs streams begin with chat.in_progress: the ids come from the request.
    turn = ChatTurn(conversation_id=CONVERSATION_ID, chat_id=CHAT_ID, log_id=LOG_ID)
    events = read_chat([IN_PROGRESS, delta("北京晴"), COMPLETED, DONE], turn)
    assert events == [TextDelta("北京晴"), FINISHED]
    assert (turn.conversation_id, turn.chat_id) == (CONVERSATION_ID, CHAT_ID)


def test_a_continuation_that_begins_with_chat_created_as_coze_documents_it_reads_the_same() -> None:
    # DOC-SUBMIT's example continuation begins with chat.created, naming the chat it continues.
    turn = ChatTurn(conversation_id=CONVERSATION_ID, chat_id=CHAT_ID, log_id=LOG_ID)
    events = read_chat([CREATED, IN_PROGRESS, delta("北京晴"), COMPLETED, DONE], turn)
    assert events == [TextDelta("北京晴"), FINISHED]
    assert (turn.conversation_id, turn.chat_id) == (CONVERSATION_ID, CHAT_ID)


def test_a_turn_without_ids_learns_them_from_a_continuations_chat_in_progress() -> None:
    turn = ChatTurn()
    assert turn.read(IN_PROGRESS) == ()
    assert (turn.conversation_id, turn.chat_id) == (CONVERSATION_ID, CHAT_ID)
    assert not turn.ended


def test_a_later_chat_in_progress_does_not_change_the_ids_the_turn_knows() -> None:
    turn = ChatTurn(conversation_id="c-1", chat_id="chat-1")
    turn.read(IN_PROGRESS)
    assert (turn.conversation_id, turn.chat_id) == ("c-1", "chat-1")


def test_a_continuation_that_asks_again_ends_with_the_new_calls_of_the_same_chat() -> None:
    action = {
        "type": "submit_tool_outputs",
        "submit_tool_outputs": {
            "tool_calls": [
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                {"id": "call_3", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            ]
        },
    }
    turn = ChatTurn(conversation_id=CONVERSATION_ID, chat_id=CHAT_ID)
    (finished,) = read_chat(
        [IN_PROGRESS, event("conversation.chat.requires_action", chat("requires_action", required_action=action))],
        turn,
    )
    assert isinstance(finished, ChatFinished)
    assert finished.finish_reason == FinishReason.TOOL_CALLS
    assert [call.id for call in finished.tool_calls] == ["call_2", "call_3"]
    assert (finished.conversation_id, finished.chat_id) == (CONVERSATION_ID, CHAT_ID)
    assert turn.ended


def test_a_continuation_cut_after_chat_in_progress_leaves_its_chat_to_cancel() -> None:
    turn = ChatTurn(conversation_id=CONVERSATION_ID, chat_id=CHAT_ID, log_id=LOG_ID)
    with pytest.raises(UpstreamUnavailable):
        read_chat([IN_PROGRESS, delta("北京")], turn)
    assert not turn.ended and (turn.conversation_id, turn.chat_id) == (CONVERSATION_ID, CHAT_ID)


def test_chat_created_without_both_ids_leaves_the_ids_unknown() -> None:
    turn = ChatTurn()
    turn.read(event("conversation.chat.created", {"id": CHAT_ID, "conversation_id": ""}))
    assert (turn.conversation_id, turn.chat_id) == ("", "")


# --- chat: what ends it in failure ----------------------------------------------------------------


def test_chat_failed_raises_its_last_error_and_ends_the_chat() -> None:
    turn = ChatTurn(log_id=LOG_ID)
    failed = event("conversation.chat.failed", chat("failed", last_error={"code": 5000, "msg": "event interval error"}))
    with pytest.raises(UpstreamUnavailable) as raised:
        read_chat([CREATED, delta("2"), failed], turn)
    assert (raised.value.upstream_code, raised.value.log_id) == ("5000", LOG_ID)
    assert "event interval error" in raised.value.message
    assert turn.ended, "Coze ended a failed chat itself: nothing to cancel"


def test_chat_failed_in_the_api_references_code_msg_shape_keeps_its_code() -> None:
    turn = ChatTurn()
    with pytest.raises(UpstreamError) as raised:
        turn.read(event("conversation.chat.failed", {"code": 701231, "msg": "error"}))
    assert raised.value.upstream_code == "701231"
    assert turn.ended


@pytest.mark.parametrize(
    ("data", "kind", "code", "fragment"),
    [
        ({"code": 5000, "msg": "internal error"}, UpstreamUnavailable, "5000", "internal error"),
        ({"code": 4013, "msg": "too fast"}, UpstreamRateLimited, "4013", "too fast"),
        ("not json at all", UpstreamError, "", "not json at all"),
    ],
)
def test_an_error_event_raises_yet_leaves_the_chat_to_be_cancelled(
    data: Any, kind: type[UpstreamError], code: str, fragment: str
) -> None:
    turn = ChatTurn(log_id=LOG_ID)
    with pytest.raises(kind) as raised:
        read_chat([CREATED, delta("2"), event("error", data)], turn)
    assert (raised.value.upstream_code, raised.value.log_id) == (code, LOG_ID)
    assert fragment in raised.value.message
    assert not turn.ended, "after an error event Coze may still run the chat"


def test_a_stream_that_ends_before_the_chat_is_cut() -> None:
    with pytest.raises(UpstreamUnavailable, match=r"ended before conversation\.chat\.completed") as raised:
        read_chat([CREATED, IN_PROGRESS, delta("2"), DONE])
    assert raised.value.log_id == LOG_ID


@pytest.mark.parametrize(
    ("sse", "fragment"),
    [
        (event("conversation.message.delta", '{"id":"1","type":"answer","content":'), "malformed"),
        (event("conversation.message.delta", '["answer"]'), "malformed"),
        (event("conversation.chat.created", "{}x"), "malformed"),
        (event("conversation.chat.completed", {"status": "completed"}), "does not match its schema"),
        (event("conversation.chat.requires_action", {"id": CHAT_ID}), "does not match its schema"),
    ],
    ids=["cut-json", "not-an-object", "trailing-garbage", "chat-without-ids", "action-without-conversation"],
)
def test_an_event_that_does_not_parse_breaks_the_stream(sse: ServerSentEvent, fragment: str) -> None:
    turn = ChatTurn(log_id=LOG_ID)
    with pytest.raises(UpstreamUnavailable, match=fragment) as raised:
        turn.read(sse)
    assert raised.value.log_id == LOG_ID


@pytest.mark.parametrize("data", [' {"type":"answer","content":"星期三"}', '{"type":"answer","content":"星期三"}\r\n '])
def test_whitespace_around_an_events_json_is_allowed(data: str) -> None:
    assert ChatTurn().read(event("conversation.message.delta", data)) == (TextDelta("星期三"),)


def test_control_characters_and_line_separators_raw_inside_json_strings_are_text() -> None:
    raw = '{"id":"1","type":"answer","content":"第一行\u2028第二行\x1c第三行\tend"}'
    assert ChatTurn().read(event("conversation.message.delta", raw)) == (
        TextDelta("第一行\u2028第二行\x1c第三行\tend"),
    )


# --- workflows ------------------------------------------------------------------------------------


def node(content: str, title: str = "Message", seq: str = "0", finished: bool = False, **fields: Any) -> dict[str, Any]:
    return {"content": content, "node_title": title, "node_seq_id": seq, "node_is_finish": finished, **fields}


INTERRUPT_EVENT_ID = "7404830425073352713/2769808280134765896"
INTERRUPT_DATA = {"data": "", "event_id": INTERRUPT_EVENT_ID, "type": 2}


def read_workflow(sse_events: Iterable[ServerSentEvent], run: WorkflowRun | None = None) -> list[WorkflowNodeEvent]:
    """What the relay yields for a workflow stream, until the run ends; a cut raises."""
    run = run if run is not None else WorkflowRun(log_id=LOG_ID)
    provided: list[WorkflowNodeEvent] = []
    for sse in sse_events:
        found = run.read(sse)
        if found is not None:
            provided.append(found)
        if run.ended:
            return provided
    raise run.cut()


def test_coze_documented_workflow_stream_yields_each_node_message_until_done() -> None:
    # DOC-WF's "Message 事件" example.
    usage = {"input_count": 50, "output_count": 100, "token_count": 150}
    stream = [
        event("Message", node("msg"), "0"),
        event("Message", node("为", seq="1"), "1"),
        event("Message", node("坐不下！", seq="4", finished=True), "4"),
        event("Message", node('{"output":"…"}', title="End", finished=True, usage=usage, node_id="900001"), "5"),
        event("Done", {}, "6"),
        event("Message", node("after Done"), "7"),
    ]
    run = WorkflowRun()
    events = read_workflow(stream, run)
    assert events == [
        WorkflowNodeEvent(content="msg", node_title="Message", node_seq_id="0"),
        WorkflowNodeEvent(content="为", node_title="Message", node_seq_id="1"),
        WorkflowNodeEvent(content="坐不下！", node_title="Message", node_seq_id="4", node_is_finish=True),
        WorkflowNodeEvent(
            content='{"output":"…"}',
            node_title="End",
            node_seq_id="0",
            node_is_finish=True,
            node_id="900001",
            usage=Usage(input_tokens=50, output_tokens=100, total_tokens=150),
        ),
    ]
    assert run.ended and not run.interrupted


@pytest.mark.parametrize("then_done", [True, False], ids=["interrupt-then-done", "interrupt-then-eof"])
def test_an_interrupt_ends_the_run_as_its_last_event(then_done: bool) -> None:
    stream = [
        event("Message", node("请问你想查看哪个城市？", title="问答", finished=True), "0"),
        event("Interrupt", {"interrupt_data": INTERRUPT_DATA, "node_title": "问答"}, "1"),
    ]
    run = WorkflowRun()
    events = read_workflow([*stream, event("Done", {}, "2")] if then_done else stream, run)
    assert events[-1] == WorkflowNodeEvent(
        node_title="问答", interrupt=WorkflowInterrupt(event_id=INTERRUPT_EVENT_ID, interrupt_type=2, data="")
    )
    assert run.ended and run.interrupted, "the relay reads what may follow (a Done) only to free the connection"


@pytest.mark.parametrize("sse", [event("PING", "", "3"), event("Whatever", {"x": 1}, "4")], ids=["ping", "unknown"])
def test_heartbeats_and_unknown_workflow_events_yield_nothing(sse: ServerSentEvent) -> None:
    run = WorkflowRun()
    assert run.read(sse) is None
    assert not run.ended


def test_a_workflow_error_event_raises_its_code() -> None:
    run = WorkflowRun(log_id=LOG_ID)
    with pytest.raises(UpstreamInvalidRequest) as raised:
        read_workflow(
            [
                event("Message", node("msg")),
                event("Error", {"error_code": 4000, "error_message": "Request parameter error"}),
            ],
            run,
        )
    assert (raised.value.upstream_code, raised.value.log_id) == ("4000", LOG_ID)
    assert "Request parameter error" in raised.value.message


def test_a_workflow_stream_that_ends_without_done_or_interrupt_is_cut() -> None:
    with pytest.raises(UpstreamUnavailable, match="ended before its Done event"):
        read_workflow([event("Message", node("msg")), event("PING", "")])


@pytest.mark.parametrize(
    ("sse", "fragment"),
    [
        (event("Interrupt", {"node_title": "问答"}), "without interrupt_data"),
        (event("Interrupt", {"interrupt_data": {**INTERRUPT_DATA, "type": "two"}}), "type is not a number"),
        (event("Message", "{not json"), "malformed Message"),
        (event("Message", node("x", usage={"input_count": "many"})), "does not match its schema"),
    ],
    ids=["no-interrupt-data", "interrupt-type", "malformed", "usage"],
)
def test_a_workflow_event_that_does_not_parse_breaks_the_stream(sse: ServerSentEvent, fragment: str) -> None:
    with pytest.raises(UpstreamUnavailable, match=fragment) as raised:
        WorkflowRun(log_id=LOG_ID).read(sse)
    assert raised.value.log_id == LOG_ID
