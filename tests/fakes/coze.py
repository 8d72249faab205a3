"""A fake Coze Open API: a real aiohttp server on 127.0.0.1 that speaks the wire format cozepy 0.20.0 expects.

The wire format follows /work/shared/docs/coze-wire.md (§§1-4, checklist in §7; its DOC-CHAT, DOC-WF and
DOC-ERR tags are used below). What that note does not cover comes from Coze's API reference as mirrored in
coze-dev/coze-sdk-gen `docs/api-markdown/` (HEAD 5db2f95): DOC-SUBMIT `chat_submit_tool_outputs.md`,
DOC-UPLOAD `upload_files.md`, DOC-CHATFLOW `workflow_chat.md`, DOC-RESUME `resume_workflow.md`; and from the
open-source Coze server coze-dev/coze-studio (STUDIO): /v1/workflows/chat is `OpenAPIChatFlowRun` in
backend/api/handler/coze/workflow_service.go, its events are made in backend/application/workflow/chatflow.go,
the workflow stream's in `convertStreamRunEvent` of backend/application/workflow/workflow.go. Where the docs
and STUDIO differ, the fake offers both shapes.

Behaviour is chosen per request by the chat `bot_id`, the workflow or chatflow `workflow_id` (the `BOT_*` /
`WORKFLOW_*` / `CHATFLOW_*` constants below); any other id behaves normally. A submit_tool_outputs
continuation behaves as the `bot_id` of the chat it continues. An upload carries no such id: while
`FakeCoze.stall_uploads` is True each upload is read whole and then never answered (nor stored) until the
client goes away, which `disconnects` records (path /v1/files/upload, scenario the file's name).

Endpoints: /v3/chat (+ retrieve, message/list, cancel, submit_tool_outputs), /v1/files/upload,
/v1/workflows/chat (chatflows), /v1/workflow/run, stream_run and stream_resume.

What the fake keeps for tests: every request in `FakeCoze.requests` (`wait_for_requests` waits for one,
e.g. the gateway's `/v3/chat/cancel`); the ids of every /v3/chat chat in `created_chats`; every accepted
chat or chatflow turn, its messages parsed (object_string content as its array) and the documented
options it set, in `received_chats`; every accepted workflow run with its options and execute_id in
`received_workflow_runs`; every accepted submit_tool_outputs in `submitted_tool_outputs`; uploaded files
(id -> bytes, name, content type) in `uploaded_files`; each chatflow conversation's messages in
`conversation_histories`; every client that goes away before its stream was finished in `disconnects`.
The server itself (recording, disconnects, cutting and stalling) is `tests.fakes._server.FakeUpstream`,
shared with the OpenAI fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiohttp import BodyPartReader, web

from tests.fakes._server import (
    BODY,
    LOG_ID,
    FakeUpstream,
    burst_pieces,
    cut,
    dumps,
    echoed_headers,
    flood_pieces,
    huge_error_text,
    split_text,
    stall,
    write_split_utf8,
)
from tests.fakes._server import FLOOD_CHUNKS as FLOOD_CHUNKS
from tests.fakes._server import SPLIT_WRITE_PAUSE as SPLIT_WRITE_PAUSE
from tests.fakes._server import Disconnect as Disconnect

# --- Chat scenarios, selected by the request's bot_id (any other bot_id streams the normal answer) ---
BOT_NORMAL = "bot-normal"  # the normal answer; any unlisted bot_id does the same
BOT_REASONING = "bot-reasoning"  # reasoning_content deltas (empty content) before the answer deltas
BOT_VERBOSE_AND_UNKNOWN = "bot-verbose-and-unknown"  # adds knowledge + follow_up messages and an unknown event
BOT_COMPLETED_ONLY = "bot-completed-only"  # the answer arrives only as message.completed, no deltas
BOT_MISSING = "bot-missing"  # JSON {"code":4200} before any event (HTTP 200)
BOT_BAD_REQUEST = "bot-bad-request"  # JSON {"code":4000} before any event (HTTP 200)
BOT_RATE_LIMITED = "bot-rate-limited"  # HTTP 429, JSON {"code":4013}, Retry-After: RETRY_AFTER_SECONDS
BOT_HTTP_502 = "bot-http-502"  # HTTP 502 text/html "<html>bad gateway</html>" (a gateway in front of Coze)
BOT_ERROR_EVENT = "bot-error-event"  # two deltas, then an `error` event, done, end
BOT_FAILED = "bot-failed"  # two deltas, then conversation.chat.failed (last_error 5000), done, end
BOT_CUT = "bot-cut"  # two deltas, then the TCP connection is aborted mid chunked body
BOT_STALL = "bot-stall"  # two deltas, then silence until the client goes away
BOT_SLOW = "bot-slow"  # the normal answer, one delta every FakeCoze.slow_interval seconds
BOT_NO_CLOSE = "bot-no-close"  # the normal stream, but the body stays open NO_CLOSE_SECONDS after done
BOT_MALFORMED = "bot-malformed"  # two deltas, `: ping` (cozepy raises), a delta whose data is not JSON, the rest
BOT_NOT_AN_OBJECT = "bot-not-an-object"  # two deltas, then a delta whose data is JSON but not an object, then the rest
BOT_HEARTBEAT = "bot-heartbeat"  # two deltas, a `: ping` heartbeat comment (valid SSE; cozepy raises), the rest
BOT_REQUIRES_ACTION = "bot-requires-action"  # chat.requires_action with one tool call (TOOL_CALL_*), done; the
#   submit_tool_outputs continuation answers tool_answer(outputs); non-streamed, the chat ends requires_action
BOT_FOLLOW_UPS = "bot-follow-ups"  # the normal answer, then FOLLOW_UP_QUESTIONS as follow_up messages
BOT_SPLIT_UTF8 = "bot-split-utf8"  # answer SPLIT_UTF8_ANSWER; each delta splits a UTF-8 char across writes
BOT_LINE_SEPARATORS = "bot-line-separators"  # answer LINE_SEPARATORS_ANSWER; deltas carry its separators raw
BOT_FLAKY = "bot-flaky"  # the first FakeCoze.flaky_failures requests of this bot_id: as BOT_HTTP_502; then normal
BOT_RATE_LIMITED_NO_RETRY_AFTER = "bot-rate-limited-no-retry-after"  # HTTP 429, JSON {"code":4013}, no Retry-After
BOT_RATE_LIMITED_ONCE = "bot-rate-limited-once"  # 1st request: HTTP 429 {"code":4013}, Retry-After: 1; then normal
BOT_STALL_AT_START = "bot-stall-at-start"  # chat.created and chat.in_progress, then silence before the first delta
BOT_FLOOD = "bot-flood"  # FLOOD_CHUNKS tiny deltas (flood_pieces()) as fast as the socket takes them, then completed
BOT_BURST_CUT = "bot-burst-cut"  # created, in_progress, BURST_PIECES deltas (burst_pieces()) at once, then a hang-up
BOT_BURST_CUT_GZIP = "bot-burst-cut-gzip"  # as BOT_BURST_CUT, with a gzip Content-Encoding (flushed per event)
BOT_CUT_AFTER_CREATED = "bot-cut-after-created"  # created and in_progress (Coze runs the chat), then the cut
BOT_ECHO_AUTH = "bot-echo-auth"  # JSON {"code":4000} whose msg quotes every request header, Authorization too
BOT_HUGE_ERROR = "bot-huge-error"  # JSON {"code":5000} with a 1 MiB msg
BOT_FAILED_DOC_SHAPE = "bot-failed-doc-shape"  # two deltas, then chat.failed as the API reference shows it: {code,msg}
# Tool-calling bots: each asks as BOT_REQUIRES_ACTION does; they differ in the submit_tool_outputs continuation.
BOT_TOOLS_TWICE = "bot-tools-twice"  # the first continuation asks again (SECOND_TOOL_CALLS), the next one answers
BOT_TOOLS_CONTINUATION_CREATED = "bot-tools-continuation-created"  # the continuation begins with chat.created, as
#   DOC-SUBMIT's example stream shows (the default continuation begins with chat.in_progress)
BOT_TOOLS_CONTINUATION_CUT = "bot-tools-continuation-cut"  # continuation: in_progress, two deltas, then the TCP cut
BOT_TOOLS_CONTINUATION_FAILED = "bot-tools-continuation-failed"  # continuation: in_progress, two deltas, chat.failed
#   (last_error 5000), done
BOT_TOOLS_CONTINUATION_STALL = "bot-tools-continuation-stall"  # continuation: in_progress, two deltas, then silence
#   until the client goes away (the chat keeps running: conversation busy until cancelled)

# --- Workflow scenarios, selected by workflow_id (any other id runs normally) ---
WORKFLOW_NORMAL = "wf-normal"  # node messages echoing the parameters, then Done; any unlisted id does the same
WORKFLOW_ERROR_EVENT = "wf-error-event"  # one Message, then Error (5000), end without Done
WORKFLOW_INTERRUPT = "wf-interrupt"  # question-node Message, then Interrupt (INTERRUPT_EVENT_ID), then Done unless
#   FakeCoze.done_after_interrupt is False (the stream then ends right after the Interrupt, as in Coze's docs);
#   /v1/workflow/run answers with its interrupt_data; stream_resume finishes the run
WORKFLOW_INTERRUPT_TWICE = "wf-interrupt-twice"  # as WORKFLOW_INTERRUPT, and stream_resume interrupts again
#   (INTERRUPT_EVENT_ID_2), in the same shape
WORKFLOW_BURST_CUT = "wf-burst-cut"  # stream: BURST_PIECES Messages at once, then a hang-up; run: half a body, hang-up
WORKFLOW_CUT_AT_START = "wf-cut-at-start"  # the stream's headers (the run has started), then the cut, no event
WORKFLOW_PING = "wf-ping"  # a PING event (with an id) between the Messages
WORKFLOW_CUT = "wf-cut"  # one Message, then the TCP connection is aborted mid chunked body
WORKFLOW_NO_DONE = "wf-no-done"  # the Messages, then a clean end of the body without Done
WORKFLOW_STALL = "wf-stall"  # one Message, then silence until the client goes away
WORKFLOW_MISSING = "wf-missing"  # JSON {"code":4200} (run, stream_run and stream_resume)
WORKFLOW_RATE_LIMITED = "wf-rate-limited"  # stream_run: HTTP 429, JSON {"code":4013}, Retry-After: RETRY_AFTER_SECONDS
WORKFLOW_INPUT_NODE = "wf-input-node"  # an input node (type 5): stream_run sends only an Interrupt whose
#   interrupt_data carries INPUT_REQUIRED_PARAMETERS (and a debug_url, as STUDIO sends); /v1/workflow/run answers
#   with that interrupt_data; stream_resume of INPUT_EVENT_ID finishes the run
WORKFLOW_NODE_IDS = "wf-node-ids"  # the normal run; Messages carry node_id, node_execute_uuid (DOC-WF), node_type
WORKFLOW_EMPTY_DONE = "wf-empty-done"  # the normal run, but Done's data is {} (DOC-WF's example), no debug_url
WORKFLOW_ERROR_DEBUG_URL = "wf-error-debug-url"  # one Message, then Error carrying a debug_url (STUDIO's shape), end

# --- Chatflow scenarios (/v1/workflows/chat), selected by workflow_id (any other id answers normally) ---
CHATFLOW_NORMAL = "chatflow-normal"  # chatflow_answer(turn, question) as chat-format SSE (DOC-CHATFLOW, §6.3), done
#   with {"debug_url"}; any unlisted workflow_id does the same
CHATFLOW_QUESTION = "chatflow-question"  # a question node, as DOC-CHATFLOW's example stream shows it: the question
#   (INTERRUPT_QUESTION) as an answer message, a verbose {"msg_type":"interrupt"}, a verbose generate_answer_finish
#   with finish_reason 1, done; no chat.completed. The conversation's next turn is the reply: weather_for(reply)
CHATFLOW_QUESTION_REQUIRES_ACTION = "chatflow-question-requires-action"  # the same question node as STUDIO's
#   /v1/workflows/chat sends it: the question as an answer message, then chat.requires_action (no
#   required_action), done; the next turn is the reply
CHATFLOW_CUT = "chatflow-cut"  # created, in_progress, two deltas, then the TCP cut
CHATFLOW_STALL = "chatflow-stall"  # created, in_progress, two deltas, then silence until the client goes away
CHATFLOW_FAILED = "chatflow-failed"  # only chat.failed with DOC-CHATFLOW's failure data {"code":"720702204",...}, end
CHATFLOW_ERROR_EVENT = "chatflow-error-event"  # created, in_progress, two deltas, then an `error` event as STUDIO
#   sends it ({"code": "<string>", "msg", "debug_url"}), end
CHATFLOW_MISSING = "chatflow-missing"  # JSON {"code":4200} before any event (an unpublished chatflow, DOC-CHATFLOW)

# --- Deterministic values tests can assert on ---
CHAT_USAGE_INPUT_COUNT = 614
CHAT_USAGE_OUTPUT_COUNT = 19
CHAT_USAGE_TOKEN_COUNT = CHAT_USAGE_INPUT_COUNT + CHAT_USAGE_OUTPUT_COUNT
WORKFLOW_USAGE_INPUT_COUNT = 50
WORKFLOW_USAGE_OUTPUT_COUNT = 100
WORKFLOW_USAGE_TOKEN_COUNT = WORKFLOW_USAGE_INPUT_COUNT + WORKFLOW_USAGE_OUTPUT_COUNT

DEFAULT_TOKEN = "pat_fake_test_token_0123456789"
DEFAULT_ANSWER = "2024 年 10 月 1 日是星期三。"
SPLIT_UTF8_ANSWER = "你好世界"
# U+2028, U+0085 and U+001C: str.splitlines() (so httpx's aiter_lines) ends a line at each, SSE at none.
# With ANSWER_PIECE_CHARS = 3 each lands in a different delta.
LINE_SEPARATORS_ANSWER = "第一行\u2028第二行\x85第三行\x1c第四行"
RETRY_AFTER_SECONDS = 3  # BOT_RATE_LIMITED's Retry-After: longer than the gateway waits to retry
SHORT_RETRY_AFTER_SECONDS = 1  # BOT_RATE_LIMITED_ONCE's Retry-After: short enough for the gateway to wait and retry
ANSWER_PIECE_CHARS = 3  # the answer is streamed in deltas of this many characters
REASONING_PIECES = ("先确定日期，", "再推算星期，", "得出结论。")
FOLLOW_UP_QUESTION = "2024 年国庆节放几天假？"
FOLLOW_UP_QUESTIONS = (FOLLOW_UP_QUESTION, "国庆节有哪些习俗？", "2025 年 10 月 1 日是星期几？")
TOOL_CALL_ID = "call_fake_0001"
TOOL_CALL_NAME = "get_weather"
TOOL_CALL_ARGUMENTS = '{"city":"北京"}'
TOOL_CALL_ID_2 = "call_fake_0002"  # BOT_TOOLS_TWICE's second round asks for this call and TOOL_CALL_ID_3
TOOL_CALL_NAME_2 = "get_time"
TOOL_CALL_ARGUMENTS_2 = '{"timezone":"Asia/Shanghai"}'
TOOL_CALL_ID_3 = "call_fake_0003"
TOOL_CALL_ARGUMENTS_3 = '{"city":"上海"}'
FIRST_TOOL_CALLS = ((TOOL_CALL_ID, TOOL_CALL_NAME, TOOL_CALL_ARGUMENTS),)  # (id, name, arguments) of each call
SECOND_TOOL_CALLS = (
    (TOOL_CALL_ID_2, TOOL_CALL_NAME_2, TOOL_CALL_ARGUMENTS_2),
    (TOOL_CALL_ID_3, TOOL_CALL_NAME, TOOL_CALL_ARGUMENTS_3),
)
INTERRUPT_EVENT_ID = "7404830425073352713/2769808280134765896"
INTERRUPT_EVENT_ID_2 = "7404830425073352713/2769808280134765999"  # WORKFLOW_INTERRUPT_TWICE's second interrupt
INTERRUPT_TYPE = 2  # question node
INTERRUPT_QUESTION = "请问你想查看哪个城市？"
INTERRUPT_NODE_TITLE = "问答"
INPUT_EVENT_ID = "7404830425073352713/2769808280134766001"  # WORKFLOW_INPUT_NODE's interrupt
INPUT_INTERRUPT_TYPE = 5  # input node
INPUT_NODE_TITLE = "输入"
# WORKFLOW_INPUT_NODE's required_parameters, in DOC-RESUME's shape: what to send, by parameter name.
INPUT_REQUIRED_PARAMETERS = {"img": {"required": True, "type": "image"}, "city": {"required": False, "type": "string"}}
UPLOAD_MAX_BYTES = 512 * 1024 * 1024  # DOC-UPLOAD: "该 API 允许上传的最大文件大小为 512 MB" (FakeCoze.max_upload_bytes)
CHAT_MAX_MESSAGES = 100  # DOC-CHAT: additional_messages holds at most 100 messages
CHATFLOW_MAX_MESSAGES = 50  # DOC-CHATFLOW: "数组长度限制为 50"
NO_CLOSE_SECONDS = 3.0

_SCENARIO_ANSWERS = {BOT_SPLIT_UTF8: SPLIT_UTF8_ANSWER, BOT_LINE_SEPARATORS: LINE_SEPARATORS_ANSWER}
_TOOL_BOTS = frozenset(
    {
        BOT_REQUIRES_ACTION,
        BOT_TOOLS_TWICE,
        BOT_TOOLS_CONTINUATION_CREATED,
        BOT_TOOLS_CONTINUATION_CUT,
        BOT_TOOLS_CONTINUATION_FAILED,
        BOT_TOOLS_CONTINUATION_STALL,
    }
)
_QUESTION_CHATFLOWS = frozenset({CHATFLOW_QUESTION, CHATFLOW_QUESTION_REQUIRES_ACTION})
_INTERRUPTING_WORKFLOWS = frozenset({WORKFLOW_INTERRUPT, WORKFLOW_INTERRUPT_TWICE, WORKFLOW_INPUT_NODE})
_CHAT_PATH = "/v3/chat"
_CHATFLOW_PATH = "/v1/workflows/chat"
_JSON_CONTENT_TYPE = "application/json"
_AUTH_FAILED = (4100, "authentication is invalid")
_BAD_REQUEST = (
    4000,
    "The field http body provided is not a valid json or chat request. Please check your input.",
)
_NOT_FOUND = (4200, "resource not found")
_RATE_LIMITED = (4013, "Your request rate is too high, please try again later.")
_STREAM_FALSE_NEEDS_SAVE = (4007, "stream=false is only allowed when auto_save_history=true")
_CONVERSATION_BUSY = (4016, "There is a chat in progress in this conversation.")
_INVALID_CHAT = (4001, "Invalid chat")
_INVALID_CONVERSATION = (4002, "Invalid conversation")
_TOO_MANY_MESSAGES = (4004, "additional messages exceeds the limit")
_NOT_CANCELLABLE = (4104, "The chat is not in progress and cannot be cancelled")
# DOC-SUBMIT: a chat started with auto_save_history=false answers submit_tool_outputs with 5000.
_SUBMIT_WITHOUT_HISTORY = (5000, "The chat was not saved (auto_save_history=false); tool outputs cannot continue it")
# Not documented: what Coze answers a submit to a chat that asks for nothing now, or with other call ids.
# 4000 ("request parameter error", DOC-ERR) is the fake's reading.
_NOT_WAITING_FOR_TOOLS = (4000, "The chat is not waiting for tool outputs")
_CHATFLOW_TAKES_NO_TOOLS = (4000, "Chatflows do not take tool outputs")  # DOC-CHATFLOW: "对话流中不支持提交端插件结果"
# DOC-ERR 4300: "上传文件时文件为空" (no file, or a body that is not multipart/form-data); 4301: more than one
# file; 4302: over the size limit.
_UPLOAD_EMPTY = (4300, "The file is empty or missing; upload it as the multipart/form-data field 'file'")
_UPLOAD_MORE_THAN_ONE = (4301, "Only one file can be uploaded at a time")
_UPLOAD_TOO_LARGE = (4302, "The file exceeds the size limit")
_TERMINAL_STATUSES = ("completed", "failed", "requires_action", "canceled")
_DOC_SHAPED_FAILURE = {"code": 701231, "msg": "error"}  # DOC-CHAT's own example data for chat.failed
_CHATFLOW_FAILURE = {"code": "720702204", "msg": "会话名不存在"}  # DOC-CHATFLOW's "执行失败" example, verbatim
_NO_EXECUTION = (4314, "execution record not found")
_EVENT_INTERVAL_ERROR = {"code": 5000, "msg": "event interval error"}
_ERROR_EVENT = {"code": 5000, "msg": "internal error"}
_WORKFLOW_ERROR = {"error_code": 5000, "error_message": "workflow node failed"}
_NODE_IDS = {"Message": "135279", "End": "900001"}  # WORKFLOW_NODE_IDS's node_id per node title


def _verbose(msg_type: str, data: str) -> str:
    """The content of a verbose message: JSON with msg_type, data and null from_module / from_unit."""
    return json.dumps(
        {"msg_type": msg_type, "data": data, "from_module": None, "from_unit": None}, separators=(",", ":")
    )


_VERBOSE_FINISH = _verbose("generate_answer_finish", '{"finish_reason":0,"FinData":""}')
# DOC-CHATFLOW's question-node example: the verbose interrupt, then a finish with finish_reason 1.
_VERBOSE_INTERRUPT = _verbose("interrupt", "")
_VERBOSE_INTERRUPT_FINISH = _verbose("generate_answer_finish", '{"finish_reason":1,"FinData":""}')


class _Refusal(Exception):
    """Raised while a request is checked: Coze answers it with this error (code, msg) and starts nothing."""

    def __init__(self, code_msg: tuple[int, str]) -> None:
        super().__init__(code_msg[1])
        self.code_msg = code_msg

    def response(self) -> web.Response:
        """The error answer."""
        return _error(self.code_msg)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case keys
    json: Any  # the parsed JSON body, or None when there was no (valid) JSON body
    time: float  # time.monotonic()
    log_id: str  # the x-tt-logid the fake answered with


@dataclass(frozen=True)
class CreatedChat:
    """The ids of a chat the fake created (what the gateway must send to /v3/chat/cancel)."""

    chat_id: str
    conversation_id: str
    bot_id: str


@dataclass(frozen=True)
class ReceivedMessage:
    """One message of a request's additional_messages, as the fake received it."""

    role: str
    type: str  # "" when the message set none
    content_type: str  # "text" when the message set none
    content: str  # as sent
    parts: tuple[dict[str, Any], ...] | None  # object_string content: the parsed array, items as sent; else None


@dataclass(frozen=True)
class ReceivedChat:
    """A /v3/chat chat or a /v1/workflows/chat turn the fake accepted."""

    path: str
    scenario: str  # the bot_id (/v3/chat) or the workflow_id (chatflow)
    chat_id: str
    conversation_id: str
    messages: tuple[ReceivedMessage, ...]
    options: dict[str, Any]  # the documented optional fields the request set, null counting as unset


@dataclass(frozen=True)
class ReceivedWorkflowRun:
    """A /v1/workflow/run or stream_run the fake accepted."""

    path: str
    workflow_id: str
    parameters: Any
    options: dict[str, Any]  # the documented optional fields the request set, null counting as unset
    execute_id: str  # the run's id: /v1/workflow/run's execute_id, and in every debug_url of the run


@dataclass(frozen=True)
class SubmittedToolOutputs:
    """A submit_tool_outputs the fake accepted."""

    chat_id: str
    conversation_id: str
    outputs: dict[str, str]  # tool_call_id -> output, in the order sent
    stream: bool


@dataclass(frozen=True)
class UploadedFile:
    """A file uploaded with /v1/files/upload, as the fake received it."""

    id: str
    file_name: str
    content_type: str  # the part's Content-Type (application/octet-stream when it had none)
    data: bytes
    created_at: int


@dataclass
class _ChatRecord:
    """Ids and state of one chat (or chatflow turn), kept so retrieve, message list, cancel and
    submit_tool_outputs can answer for it."""

    chat_id: str
    conversation_id: str
    bot_id: str
    answer_message_id: str
    verbose_message_id: str
    answer: str
    created_at: int
    status: str = "in_progress"
    path: str = _CHAT_PATH
    auto_save_history: bool = True
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # what requires_action asks for now
    tool_rounds: int = 0  # submit_tool_outputs accepted so far
    last_error: dict[str, Any] | None = None
    workflow_id: str = ""  # chatflows
    execute_id: str = ""  # chatflows

    def chat(self, status: str, **extra: Any) -> dict[str, Any]:
        """A Chat object in the given status; terminal statuses carry the fake's usage."""
        usage = {"token_count": 0, "output_count": 0, "input_count": 0}
        if status in ("completed", "failed", "requires_action", "canceled"):
            usage = chat_usage()
        chat: dict[str, Any] = {
            "id": self.chat_id,
            "conversation_id": self.conversation_id,
            "bot_id": self.bot_id,
            "created_at": self.created_at,
            "last_error": self.last_error or {"code": 0, "msg": ""},
            "status": status,
            "usage": usage,
        }
        if status == "completed":
            chat["completed_at"] = int(time.time())
        if status == "requires_action" and self.tool_calls:
            chat["required_action"] = {
                "type": "submit_tool_outputs",
                "submit_tool_outputs": {"tool_calls": self.tool_calls},
            }
        if self.path == _CHATFLOW_PATH:
            # Chatflow events carry section_id and no bot_id (§6.3, DOC-CHATFLOW's examples).
            del chat["bot_id"]
            chat["section_id"] = self.conversation_id
        chat.update(extra)
        return chat

    def message(self, message_id: str, message_type: str, content: str, **extra: Any) -> dict[str, Any]:
        """An assistant Message object of this chat."""
        message = {
            "id": message_id,
            "conversation_id": self.conversation_id,
            "bot_id": self.bot_id,
            "role": "assistant",
            "type": message_type,
            "content": content,
            "content_type": "text",
            "chat_id": self.chat_id,
            **extra,
        }
        if self.path == _CHATFLOW_PATH:
            del message["bot_id"]
            message["section_id"] = self.conversation_id
        return message


def chat_usage() -> dict[str, int]:
    """The usage every finished chat reports."""
    return {
        "token_count": CHAT_USAGE_TOKEN_COUNT,
        "output_count": CHAT_USAGE_OUTPUT_COUNT,
        "input_count": CHAT_USAGE_INPUT_COUNT,
    }


def workflow_usage() -> dict[str, int]:
    """The usage every workflow run reports."""
    return {
        "input_count": WORKFLOW_USAGE_INPUT_COUNT,
        "output_count": WORKFLOW_USAGE_OUTPUT_COUNT,
        "token_count": WORKFLOW_USAGE_TOKEN_COUNT,
    }


def workflow_output(parameters: Any) -> str:
    """The End-node output (and /v1/workflow/run `data`) for the given input parameters."""
    return dumps({"output": parameters})


def split_answer(answer: str) -> list[str]:
    """The delta pieces the fake streams for an answer; joined they equal the answer."""
    return split_text(answer, ANSWER_PIECE_CHARS)


def tool_answer(outputs: Iterable[str]) -> str:
    """A tool bot's answer after its last submit_tool_outputs: the outputs, in the order the calls were asked."""
    return "根据工具结果：" + "；".join(outputs) + "。"


def chatflow_answer(turn: int, question: str) -> str:
    """A chatflow's answer to the conversation's turn-th question (counted from 1)."""
    return f"第 {turn} 轮：{question}"


def weather_for(place: str) -> str:
    """What an interrupted workflow or chatflow answers once told the place it asked for."""
    return f"{place}：晴，25°C"


def execute_id_of(event_id: str) -> str:
    """The execution an interrupt's event_id belongs to: its part before the slash (STUDIO: "<execute_id>/<id>")."""
    return event_id.partition("/")[0]


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def _error(code_msg: tuple[int, str], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Coze sends business errors as HTTP 200 with a code/msg envelope (spec §4.2).
    code, msg = code_msg
    return _json({"code": code, "msg": msg}, status=status, headers=headers)


def _ok(data: Any) -> web.Response:
    return _json({"code": 0, "msg": "", "data": data})


def _chat_event(name: str, data: Any) -> bytes:
    return f"event:{name}\ndata:{dumps(data)}\n\n".encode()


def _chatflow_event(name: str, data: Any) -> bytes:
    # Chatflow streams put a space after each colon (§6.3's fixture, DOC-CHATFLOW's examples).
    return f"event: {name}\ndata: {dumps(data)}\n\n".encode()


def _workflow_event(event_id: int, name: str, data: Any) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {dumps(data)}\n\n".encode()


def _debug_url(execute_id: str, workflow_id: str) -> str:
    return (
        f"https://www.coze.cn/work_flow?execute_id={execute_id}&space_id=7361424235321600000&workflow_id={workflow_id}"
    )


# --- request checks: the documented optional fields and their types ---


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _is_string(value: Any) -> bool:
    return isinstance(value, str)


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


def _is_shortcut_command(value: Any) -> bool:
    # DOC-CHAT's ShortcutCommandDetail: command_id (String, required), parameters (Map<String, String>).
    return (
        isinstance(value, dict)
        and isinstance(value.get("command_id"), str)
        and (value.get("parameters") is None or _is_string_map(value["parameters"]))
    )


# DOC-CHAT's optional body fields and their documented types (DOC-ERR 4000: "参数格式错误").
_CHAT_OPTIONS: Mapping[str, Callable[[Any], bool]] = {
    "auto_save_history": _is_bool,
    "custom_variables": _is_string_map,
    "meta_data": _is_string_map,
    "extra_params": _is_string_map,
    "shortcut_command": _is_shortcut_command,
    "parameters": _is_object,
    "enable_card": _is_bool,
    "publish_status": lambda value: value in ("published_online", "unpublished_draft"),
    "bot_version": _is_string,
}
# DOC-WF's optional fields of /v1/workflow/run and stream_run.
_WORKFLOW_OPTIONS: Mapping[str, Callable[[Any], bool]] = {
    "bot_id": _is_string,
    "app_id": _is_string,
    "ext": _is_string_map,
    "workflow_version": _is_string,
    "connector_id": _is_string,
    "is_async": _is_bool,
}
# DOC-CHATFLOW's fields besides workflow_id, additional_messages and conversation_id.
_CHATFLOW_OPTIONS: Mapping[str, Callable[[Any], bool]] = {
    "parameters": _is_object,
    "bot_id": _is_string,
    "app_id": _is_string,
    "ext": _is_string_map,
    "workflow_version": _is_string,
    "connector_id": _is_string,
}


def _invalid_field(name: str) -> tuple[int, str]:
    return (4000, f"The field {name} provided is not valid. Please check your input.")


def _options(body: dict[str, Any], checks: Mapping[str, Callable[[Any], bool]]) -> dict[str, Any]:
    """The documented optional fields ``body`` sets (null counts as unset); raises _Refusal for a wrong type."""
    options: dict[str, Any] = {}
    for name, is_valid in checks.items():
        value = body.get(name)
        if value is None:
            continue
        if not is_valid(value):
            raise _Refusal(_invalid_field(name))
        options[name] = value
    return options


def _tool_calls(calls: Iterable[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """required_action's tool_calls for (id, name, arguments) triples."""
    return [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in calls
    ]


def _tool_outputs(value: Any) -> dict[str, str]:
    """DOC-SUBMIT's tool_outputs ([{tool_call_id, output}], both strings, one per call) as id -> output."""
    if not isinstance(value, list) or not value:
        raise _Refusal(_invalid_field("tool_outputs"))
    outputs: dict[str, str] = {}
    for item in value:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("tool_call_id"), str)
            or not isinstance(item.get("output"), str)
            or item["tool_call_id"] in outputs
        ):
            raise _Refusal(_invalid_field("tool_outputs"))
        outputs[item["tool_call_id"]] = item["output"]
    return outputs


def _text_of(message: ReceivedMessage) -> str:
    """A message's text: its content, or the text item of its object_string content."""
    if message.parts is None:
        return message.content
    return "".join(str(part.get("text") or "") for part in message.parts if part.get("type") == "text")


class FakeCoze(FakeUpstream[RecordedRequest]):
    """A fake Coze Open API on 127.0.0.1, speaking the wire format cozepy 0.20.0 expects."""

    log_id_header: ClassVar[str] = "x-tt-logid"

    def __init__(self, token: str = DEFAULT_TOKEN, answer: str = DEFAULT_ANSWER) -> None:
        super().__init__(credential=token)
        self.token = token
        self.answer = answer
        self.no_close_seconds = NO_CLOSE_SECONDS  # how long BOT_NO_CLOSE keeps the body open after done
        # A chat whose client left keeps running, its conversation busy (4016), until it is
        # cancelled or this many seconds pass; a cancel takes cancel_latency to answer.
        self.orphan_seconds = 5.0
        self.cancel_latency = 0.05
        self.cancelled_chats: list[str] = []  # ids of the chats a cancel stopped, in order
        self.done_after_interrupt = True  # False: an interrupted workflow stream ends right after Interrupt
        self.max_upload_bytes = UPLOAD_MAX_BYTES  # a larger upload is refused with 4302
        self.stall_uploads = False  # True: an upload is read whole, then never answered (see the module docstring)
        # Random start so ids differ between fakes; still 19 digits like Coze's snowflake ids.
        self._ids = itertools.count(7_400_000_000_000_000_000 + secrets.randbelow(10**16))
        self._log_ids = itertools.count(1)
        self._chats: dict[str, _ChatRecord] = {}
        self._busy_conversations: set[str] = set()
        self._waiting_chatflows: set[str] = set()  # conversations whose chatflow waits at a question node
        self.created_chats: list[CreatedChat] = []
        # What the gateway sent (kept unless keep_requests is False), see the module docstring.
        self.received_chats: list[ReceivedChat] = []
        self.received_workflow_runs: list[ReceivedWorkflowRun] = []
        self.submitted_tool_outputs: list[SubmittedToolOutputs] = []
        self.uploaded_files: dict[str, UploadedFile] = {}
        self.conversation_histories: dict[str, list[dict[str, str]]] = {}  # chatflows: {role, content} in order

    def forget(self) -> None:
        """Drop the records, and the chats and files too: their retrieve and cancel then answer "invalid chat"."""
        super().forget()
        self._chats.clear()
        self._waiting_chatflows.clear()
        self.created_chats.clear()
        self.cancelled_chats.clear()
        self.received_chats.clear()
        self.received_workflow_runs.clear()
        self.submitted_tool_outputs.clear()
        self.uploaded_files.clear()
        self.conversation_histories.clear()

    # --- plumbing ---

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(_CHAT_PATH, self._chat)
        router.add_route("POST", "/v3/chat/retrieve", self._retrieve)
        router.add_route("GET", "/v3/chat/retrieve", self._retrieve)
        router.add_get("/v3/chat/message/list", self._message_list)
        router.add_post("/v3/chat/cancel", self._cancel)
        router.add_post("/v3/chat/submit_tool_outputs", self._submit_tool_outputs)
        router.add_post("/v1/files/upload", self._upload_file)
        router.add_post(_CHATFLOW_PATH, self._chatflow)
        router.add_post("/v1/workflow/run", self._workflow_run)
        router.add_post("/v1/workflow/stream_run", self._workflow_stream_run)
        router.add_post("/v1/workflow/stream_resume", self._workflow_stream_resume)

    def _record(self, request: web.Request, body: Any) -> RecordedRequest:
        return RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={key.lower(): value for key, value in request.headers.items()},
            json=body,
            time=time.monotonic(),
            log_id=request[LOG_ID],
        )

    def _auth_failed(self) -> web.Response:
        return _error(_AUTH_FAILED)

    def _new_id(self) -> str:
        return str(next(self._ids))

    def _new_log_id(self) -> str:
        # Coze's format: 14 digits of local time, then 20 upper-case hex digits (34 characters).
        return f"{time.strftime('%Y%m%d%H%M%S')}{next(self._log_ids):06X}{secrets.token_hex(7).upper()}"

    @contextlib.contextmanager
    def _running(self, record: _ChatRecord) -> Iterator[None]:
        """The chat runs, its conversation busy (4016), while the block streams it. If the stream ends
        before Coze ended the chat (the client left, the connection broke), Coze keeps running it:
        the conversation stays busy until a cancel lands or orphan_seconds pass."""
        self._busy_conversations.add(record.conversation_id)
        try:
            yield
        finally:
            if record.status in _TERMINAL_STATUSES:
                self._busy_conversations.discard(record.conversation_id)
            else:
                asyncio.get_running_loop().call_later(self.orphan_seconds, self._end_chat, record, "completed")

    def _end_chat(self, record: _ChatRecord, status: str) -> None:
        """A chat that still ran ends (it completes on its own, or a cancel landed); its conversation is free."""
        if record.status not in _TERMINAL_STATUSES:
            record.status = status
            self._busy_conversations.discard(record.conversation_id)

    def _keep(self, records: list[Any], record: Any) -> None:
        if self.keep_requests:
            records.append(record)

    # --- additional_messages ---

    def _received_messages(self, value: Any, *, limit: int) -> tuple[ReceivedMessage, ...]:
        """additional_messages as received; raises _Refusal for what Coze refuses (DOC-CHAT's rules)."""
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise _Refusal(_invalid_field("additional_messages"))
        if len(value) > limit:
            raise _Refusal(_TOO_MANY_MESSAGES)
        messages = tuple(self._received_message(item) for item in value)
        for index, message in enumerate(messages):
            if message.parts is not None and not any(part.get("type") == "text" for part in message.parts):
                # DOC-CHAT: "每条纯图片或纯文件消息的前一条或后一条消息中，必须包含一条 content_type: text
                # 的纯文本消息 … 否则接口会报 4000 参数错误"
                neighbours = messages[max(0, index - 1) : index] + messages[index + 1 : index + 2]
                if not any(neighbour.content_type == "text" for neighbour in neighbours):
                    raise _Refusal((4000, "A message of only images or files needs a text message next to it"))
        return messages

    def _received_message(self, item: dict[str, Any]) -> ReceivedMessage:
        # cozepy sends every unset Message field as null (spec §2.1): null counts as unset.
        role, content = item.get("role"), item.get("content") or ""
        message_type, content_type = item.get("type") or "", item.get("content_type") or "text"
        if not all(isinstance(value, str) for value in (role, content, message_type, content_type)):
            raise _Refusal(_invalid_field("additional_messages"))
        parts = self._object_string(content) if content_type == "object_string" else None
        return ReceivedMessage(str(role), str(message_type), str(content_type), str(content), parts)

    def _object_string(self, content: str) -> tuple[dict[str, Any], ...]:
        """The items of object_string content (DOC-CHAT's "object_string object"); raises _Refusal (4000)
        for what the doc forbids, and for a file_id this fake was never given (DOC-CHAT: "必须是当前账号上传的
        文件 ID"; the code Coze answers it with is not documented, 4000 is the fake's reading)."""
        try:
            items = json.loads(content)
        except ValueError:
            items = None
        if not isinstance(items, list) or not items or not all(isinstance(item, dict) for item in items):
            raise _Refusal((4000, "object_string content must be a JSON array of objects"))
        for item in items:
            kind = item.get("type")
            if kind == "text":
                if not isinstance(item.get("text"), str):
                    raise _Refusal((4000, "A text item of object_string content needs its text"))
                continue
            if kind not in ("file", "image", "audio"):
                raise _Refusal((4000, f"Unknown object_string item type: {kind!r}"))
            file_id, file_url = item.get("file_id"), item.get("file_url")
            if not (isinstance(file_id, str) and file_id) and not (isinstance(file_url, str) and file_url):
                raise _Refusal((4000, f"An object_string {kind} item needs a file_id or a file_url"))
            if isinstance(file_id, str) and file_id and file_id not in self.uploaded_files:
                raise _Refusal((4000, f"file_id {file_id} is not a file uploaded by this account"))
        texts = sum(1 for item in items if item.get("type") == "text")
        # DOC-CHAT: at most one text item, and a text item only together with a file or an image.
        if texts > 1 or texts == len(items):
            raise _Refusal((4000, "object_string content takes at most one text item, and only with files or images"))
        return tuple(items)

    # --- chat ---

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("bot_id"), str)
            or not body["bot_id"]
            or not isinstance(body.get("user_id"), str)
        ):
            return _error(_BAD_REQUEST)
        bot_id: str = body["bot_id"]
        if early := self._chat_scenario_error(bot_id, request):
            return early
        try:
            options = _options(body, _CHAT_OPTIONS)
            messages = self._received_messages(body.get("additional_messages"), limit=CHAT_MAX_MESSAGES)
        except _Refusal as refusal:
            return refusal.response()
        stream = body.get("stream") is True
        auto_save_history: bool = options.get("auto_save_history", True)
        if not stream and not auto_save_history:
            return _error(_STREAM_FALSE_NEEDS_SAVE)
        # cozepy always sends `?conversation_id=`; empty means "start a new conversation".
        conversation_id = request.query.get("conversation_id") or self._new_id()
        if conversation_id in self._busy_conversations:
            return _error(_CONVERSATION_BUSY)
        record = _ChatRecord(
            chat_id=self._new_id(),
            conversation_id=conversation_id,
            bot_id=bot_id,
            answer_message_id=self._new_id(),
            verbose_message_id=self._new_id(),
            answer=_SCENARIO_ANSWERS.get(bot_id, self.answer),
            created_at=int(time.time()),
            auto_save_history=auto_save_history,
            tool_calls=_tool_calls(FIRST_TOOL_CALLS) if bot_id in _TOOL_BOTS else [],
        )
        self._chats[record.chat_id] = record
        self.created_chats.append(CreatedChat(record.chat_id, record.conversation_id, bot_id))
        received = ReceivedChat(_CHAT_PATH, bot_id, record.chat_id, conversation_id, messages, options)
        self._keep(self.received_chats, received)
        if not stream:
            # Coze answers at once with in_progress; the fake's chat is done (or asks for its tools)
            # by the first retrieve.
            record.status = "requires_action" if record.tool_calls else "completed"
            return _ok(record.chat("in_progress"))
        headers = {"Content-Encoding": "gzip"} if bot_id == BOT_BURST_CUT_GZIP else None
        with self._running(record):
            async with self._event_stream(request, bot_id, headers=headers) as response:
                await self._write_chat(request, response, record)
            return response

    def _chat_scenario_error(self, bot_id: str, request: web.Request) -> web.Response | None:
        if bot_id == BOT_ECHO_AUTH:
            return _error((4000, echoed_headers(request)))
        if bot_id == BOT_HUGE_ERROR:
            return _error((5000, huge_error_text()))
        if bot_id == BOT_MISSING:
            return _error(_NOT_FOUND)
        if bot_id == BOT_BAD_REQUEST:
            return _error(_BAD_REQUEST)
        if bot_id == BOT_RATE_LIMITED:
            return _error(_RATE_LIMITED, status=429, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if bot_id == BOT_RATE_LIMITED_NO_RETRY_AFTER:
            return _error(_RATE_LIMITED, status=429)
        if bot_id == BOT_RATE_LIMITED_ONCE and self._fails_this_time(bot_id, 1):
            return _error(_RATE_LIMITED, status=429, headers={"Retry-After": str(SHORT_RETRY_AFTER_SECONDS)})
        if bot_id == BOT_HTTP_502 or (bot_id == BOT_FLAKY and self._fails_this_time(bot_id, self.flaky_failures)):
            return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
        return None

    async def _write_chat(self, request: web.Request, response: web.StreamResponse, record: _ChatRecord) -> None:
        scenario = record.bot_id
        if scenario in (BOT_BURST_CUT, BOT_BURST_CUT_GZIP):
            await self._write_burst(request, response, record)
        await response.write(_chat_event("conversation.chat.created", record.chat("created")))
        await response.write(_chat_event("conversation.chat.in_progress", record.chat("in_progress")))
        if record.tool_calls:
            await self._write_requires_action(response, record)
            return
        if scenario == BOT_REASONING:
            for piece in REASONING_PIECES:
                delta = record.message(record.answer_message_id, "answer", "", reasoning_content=piece)
                await response.write(_chat_event("conversation.message.delta", delta))
        if scenario == BOT_VERBOSE_AND_UNKNOWN:
            knowledge = record.message(self._new_id(), "knowledge", "2024 年 10 月 1 日：国庆节。")
            await response.write(_chat_event("conversation.message.completed", knowledge))
            await response.write(_chat_event("conversation.audio.whatever", {"id": self._new_id()}))
        if scenario == BOT_STALL_AT_START:
            await stall()
        if scenario == BOT_FLOOD:
            await self._write_flood(response, record)
            return
        if scenario == BOT_CUT_AFTER_CREATED:
            cut(request)

        pieces = [] if scenario == BOT_COMPLETED_ONLY else split_answer(record.answer)
        for index, piece in enumerate(pieces[:2]):
            await self._write_delta(response, record, piece, slow=index > 0)
        if scenario == BOT_ERROR_EVENT:
            await response.write(_chat_event("error", _ERROR_EVENT))
            await response.write(_chat_event("done", "[DONE]"))
            return
        if scenario == BOT_FAILED:
            await self._write_failed(response, record)
            return
        if scenario == BOT_FAILED_DOC_SHAPE:
            record.status = "failed"
            await response.write(_chat_event("conversation.chat.failed", _DOC_SHAPED_FAILURE))
            await response.write(_chat_event("done", "[DONE]"))
            return
        if scenario == BOT_CUT:
            cut(request)
        if scenario == BOT_STALL:
            await stall()
        if scenario in (BOT_MALFORMED, BOT_HEARTBEAT):
            await response.write(b": ping\n\n")
        if scenario == BOT_MALFORMED:
            await response.write(b'event:conversation.message.delta\ndata:{"id":"1","type":"answer","content":\n\n')
        if scenario == BOT_NOT_AN_OBJECT:
            await response.write(b'event:conversation.message.delta\ndata:["answer"]\n\n')
        for piece in pieces[2:]:
            await self._write_delta(response, record, piece, slow=True)

        # Coze sends each suggestion as its own follow_up message, after the answer and verbose.
        follow_ups: tuple[str, ...] = ()
        if scenario == BOT_VERBOSE_AND_UNKNOWN:
            follow_ups = (FOLLOW_UP_QUESTION,)
        if scenario == BOT_FOLLOW_UPS:
            follow_ups = FOLLOW_UP_QUESTIONS
        await self._write_answer_end(response, record, follow_ups=follow_ups)
        if scenario == BOT_NO_CLOSE:
            await asyncio.sleep(self.no_close_seconds)

    async def _write_answer_end(
        self,
        response: web.StreamResponse,
        record: _ChatRecord,
        *,
        follow_ups: Iterable[str] = (),
        event: Callable[[str, Any], bytes] = _chat_event,
        done: Any = "[DONE]",
    ) -> None:
        """The whole answer (message.completed), the verbose generate_answer_finish, the follow-ups,
        chat.completed with the usage, then done."""
        answer = record.message(record.answer_message_id, "answer", record.answer)
        await response.write(event("conversation.message.completed", answer))
        verbose = record.message(record.verbose_message_id, "verbose", _VERBOSE_FINISH)
        await response.write(event("conversation.message.completed", verbose))
        for question in follow_ups:
            follow_up = record.message(self._new_id(), "follow_up", question)
            await response.write(event("conversation.message.completed", follow_up))
        record.status = "completed"
        await response.write(event("conversation.chat.completed", record.chat("completed")))
        await response.write(event("done", done))

    async def _write_requires_action(self, response: web.StreamResponse, record: _ChatRecord) -> None:
        record.status = "requires_action"
        await response.write(_chat_event("conversation.chat.requires_action", record.chat("requires_action")))
        await response.write(_chat_event("done", "[DONE]"))

    async def _write_failed(self, response: web.StreamResponse, record: _ChatRecord) -> None:
        record.status = "failed"
        record.last_error = _EVENT_INTERVAL_ERROR
        await response.write(_chat_event("conversation.chat.failed", record.chat("failed", failed_at=int(time.time()))))
        await response.write(_chat_event("done", "[DONE]"))

    async def _write_flood(self, response: web.StreamResponse, record: _ChatRecord) -> None:
        for piece in flood_pieces():
            delta = record.message(record.answer_message_id, "answer", piece)
            await self._write_flood_delta(response, _chat_event("conversation.message.delta", delta))
        record.status = "completed"
        await response.write(_chat_event("conversation.chat.completed", record.chat("completed")))
        await response.write(_chat_event("done", "[DONE]"))

    async def _write_burst(self, request: web.Request, response: web.StreamResponse, record: _ChatRecord) -> None:
        events = [
            _chat_event("conversation.chat.created", record.chat("created")),
            _chat_event("conversation.chat.in_progress", record.chat("in_progress")),
            *(
                _chat_event("conversation.message.delta", record.message(record.answer_message_id, "answer", piece))
                for piece in burst_pieces()
            ),
        ]
        if record.bot_id == BOT_BURST_CUT_GZIP:
            # One gzip stream, flushed after each event so each can be decoded as it arrives.
            compressor = zlib.compressobj(wbits=31)
            events = [compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH) for event in events]
        await self._burst_then_hang_up(request, response, events)

    async def _write_delta(self, response: web.StreamResponse, record: _ChatRecord, piece: str, *, slow: bool) -> None:
        if slow and record.bot_id == BOT_SLOW:
            await asyncio.sleep(self.slow_interval)
        delta = _chat_event("conversation.message.delta", record.message(record.answer_message_id, "answer", piece))
        if record.bot_id == BOT_SPLIT_UTF8:
            await write_split_utf8(response, delta)
        elif record.bot_id == BOT_LINE_SEPARATORS:
            # dumps leaves U+2028 and U+0085 raw but escapes U+001C, as JSON asks; send that one raw too.
            await response.write(delta.replace(b"\\u001c", b"\x1c"))
        else:
            await response.write(delta)

    def _known_chat(self, request: web.Request) -> _ChatRecord | None:
        body = request[BODY] if isinstance(request[BODY], dict) else {}
        chat_id = request.query.get("chat_id") or body.get("chat_id")
        return self._chats.get(chat_id) if isinstance(chat_id, str) else None

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        record = self._known_chat(request)
        if record is None:
            return _error(_INVALID_CHAT)
        return _ok(record.chat(record.status))

    async def _message_list(self, request: web.Request) -> web.StreamResponse:
        record = self._known_chat(request)
        if record is None:
            return _error(_INVALID_CHAT)
        # No `first_id` here: cozepy would turn `data` into a paging dict and fail (spec §2.5).
        if record.status == "requires_action" and record.tool_calls:
            # A chat that waits for its tools has, so far, the calls it made (DOC-CHAT's type function_call).
            return _ok(
                [record.message(self._new_id(), "function_call", dumps(call["function"])) for call in record.tool_calls]
            )
        verbose = record.message(record.verbose_message_id, "verbose", _VERBOSE_FINISH)
        answer = record.message(record.answer_message_id, "answer", record.answer)
        return _ok([verbose, answer])

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        record = self._known_chat(request)
        if record is None:
            return _error(_INVALID_CHAT)
        if record.status in _TERMINAL_STATUSES:
            return _error(_NOT_CANCELLABLE)
        # The answer is the chat as cancelled: it has stopped, and its conversation is free.
        await asyncio.sleep(self.cancel_latency)
        self._end_chat(record, "canceled")
        self.cancelled_chats.append(record.chat_id)
        return _ok(record.chat("canceled"))

    # --- submit_tool_outputs: a chat's continuation ---

    async def _submit_tool_outputs(self, request: web.Request) -> web.StreamResponse:
        try:
            record, outputs, stream = self._checked_submission(request)
        except _Refusal as refusal:
            return refusal.response()
        self._keep(
            self.submitted_tool_outputs,
            SubmittedToolOutputs(record.chat_id, record.conversation_id, outputs, stream),
        )
        asks_again = record.bot_id == BOT_TOOLS_TWICE and record.tool_rounds == 0
        record.tool_rounds += 1
        if not asks_again:
            record.answer = tool_answer(outputs[call["id"]] for call in record.tool_calls)
            record.answer_message_id, record.verbose_message_id = self._new_id(), self._new_id()
        record.status = "in_progress"
        if not stream:
            # As /v3/chat does unstreamed: the Chat at once, in_progress; the continuation has
            # ended by the first retrieve.
            self._continue_at_once(record, asks_again=asks_again)
            return _ok(record.chat("in_progress"))
        with self._running(record):
            async with self._event_stream(request, record.bot_id) as response:
                await self._write_continuation(request, response, record, asks_again=asks_again)
            return response

    def _checked_submission(self, request: web.Request) -> tuple[_ChatRecord, dict[str, str], bool]:
        """The chat a submit_tool_outputs continues, its outputs and whether it streams; raises _Refusal."""
        record = self._chats.get(request.query.get("chat_id", ""))
        if record is None:
            raise _Refusal(_INVALID_CHAT)
        if request.query.get("conversation_id") != record.conversation_id:
            raise _Refusal(_INVALID_CONVERSATION)
        if record.path != _CHAT_PATH:
            raise _Refusal(_CHATFLOW_TAKES_NO_TOOLS)
        body = request[BODY]
        if not isinstance(body, dict):
            raise _Refusal(_BAD_REQUEST)
        stream = body.get("stream")
        if stream is None:
            stream = False  # DOC-SUBMIT: false is the default (an unstreamed answer)
        if not isinstance(stream, bool):
            raise _Refusal(_invalid_field("stream"))
        outputs = _tool_outputs(body.get("tool_outputs"))
        if not record.auto_save_history:
            raise _Refusal(_SUBMIT_WITHOUT_HISTORY)
        if record.status != "requires_action":
            raise _Refusal(_NOT_WAITING_FOR_TOOLS)
        asked = [call["id"] for call in record.tool_calls]
        if sorted(outputs) != sorted(asked):
            raise _Refusal((4000, f"tool_outputs must answer the tool calls {asked}, and only them"))
        if record.conversation_id in self._busy_conversations:
            raise _Refusal(_CONVERSATION_BUSY)
        return record, outputs, stream

    def _continue_at_once(self, record: _ChatRecord, *, asks_again: bool) -> None:
        if asks_again:
            record.tool_calls = _tool_calls(SECOND_TOOL_CALLS)
            record.status = "requires_action"
        elif record.bot_id == BOT_TOOLS_CONTINUATION_FAILED:
            record.status = "failed"
            record.last_error = _EVENT_INTERVAL_ERROR
        else:
            record.status = "completed"

    async def _write_continuation(
        self, request: web.Request, response: web.StreamResponse, record: _ChatRecord, *, asks_again: bool
    ) -> None:
        """The continuation in /v3/chat's grammar: chat.in_progress, then what the bot does next.

        The chat exists already, so no chat.created (issue 13's reading of Coze, which the gateway's
        ChatTurn relies on); DOC-SUBMIT's example stream does begin with chat.created, offered as
        BOT_TOOLS_CONTINUATION_CREATED."""
        scenario = record.bot_id
        if scenario == BOT_TOOLS_CONTINUATION_CREATED:
            await response.write(_chat_event("conversation.chat.created", record.chat("created")))
        await response.write(_chat_event("conversation.chat.in_progress", record.chat("in_progress")))
        if asks_again:
            record.tool_calls = _tool_calls(SECOND_TOOL_CALLS)
            await self._write_requires_action(response, record)
            return
        pieces = split_answer(record.answer)
        for piece in pieces[:2]:
            await self._write_delta(response, record, piece, slow=False)
        if scenario == BOT_TOOLS_CONTINUATION_FAILED:
            await self._write_failed(response, record)
            return
        if scenario == BOT_TOOLS_CONTINUATION_CUT:
            cut(request)
        if scenario == BOT_TOOLS_CONTINUATION_STALL:
            await stall()
        for piece in pieces[2:]:
            await self._write_delta(response, record, piece, slow=False)
        await self._write_answer_end(response, record)

    # --- files ---

    async def _upload_file(self, request: web.Request) -> web.StreamResponse:
        """DOC-UPLOAD: one file, the multipart/form-data field `file`; answers the File object."""
        if request.content_type != "multipart/form-data":
            return _error(_UPLOAD_EMPTY)
        try:
            files = await self._read_files(request)
        except _Refusal as refusal:
            return refusal.response()
        except ValueError:  # a malformed multipart body
            return _error(_UPLOAD_EMPTY)
        if len(files) > 1:
            return _error(_UPLOAD_MORE_THAN_ONE)
        if not files or not files[0].data:
            return _error(_UPLOAD_EMPTY)
        uploaded = files[0]
        if self.stall_uploads:
            # The body arrived and the client waits for the file id; only a client that leaves ends this.
            async with self._watching(request, uploaded.file_name):
                await stall()
        self.uploaded_files[uploaded.id] = uploaded
        return _ok(
            {
                "id": uploaded.id,
                "bytes": len(uploaded.data),
                "created_at": uploaded.created_at,
                "file_name": uploaded.file_name,
            }
        )

    async def _read_files(self, request: web.Request) -> list[UploadedFile]:
        """Every `file` part of the body, read in chunks; raises _Refusal once one passes max_upload_bytes."""
        files: list[UploadedFile] = []
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            # The reader skips what is left of a part it moves past.
            if not isinstance(part, BodyPartReader) or part.name != "file":
                continue
            data = bytearray()
            while chunk := await part.read_chunk():
                data.extend(chunk)
                if len(data) > self.max_upload_bytes:
                    raise _Refusal(_UPLOAD_TOO_LARGE)
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            files.append(UploadedFile(self._new_id(), part.filename or "", content_type, bytes(data), int(time.time())))
        return files

    # --- chatflows (/v1/workflows/chat) ---

    async def _chatflow(self, request: web.Request) -> web.StreamResponse:
        """A chatflow turn, in the chat-format SSE of §6.3. A question node ends the turn (see
        CHATFLOW_QUESTION*); the conversation's next turn is the reply to it, as DOC-CHATFLOW says:
        "对话中断时只需再次调用对话流，在 additional_messages 中指定输入内容，即可继续对话"."""
        try:
            record, scenario = self._checked_chatflow(request)
        except _Refusal as refusal:
            return refusal.response()
        with self._running(record):
            async with self._event_stream(request, scenario) as response:
                await self._write_chatflow(request, response, record, scenario)
            return response

    def _checked_chatflow(self, request: web.Request) -> tuple[_ChatRecord, str]:
        """The turn a /v1/workflows/chat request starts, and the scenario it plays; raises _Refusal."""
        body = request[BODY]
        if not isinstance(body, dict) or not isinstance(body.get("workflow_id"), str) or not body["workflow_id"]:
            raise _Refusal(_BAD_REQUEST)
        workflow_id: str = body["workflow_id"]
        if workflow_id == CHATFLOW_MISSING:
            raise _Refusal(_NOT_FOUND)
        options = _options(body, _CHATFLOW_OPTIONS)
        # DOC-CHATFLOW: app_id or bot_id must be set, "不支持同时指定 bot_id 和 app_id".
        if ("app_id" in options) == ("bot_id" in options):
            raise _Refusal((4000, "Set exactly one of app_id and bot_id"))
        messages = self._received_messages(body.get("additional_messages"), limit=CHATFLOW_MAX_MESSAGES)
        if not messages or messages[-1].role != "user":
            raise _Refusal((4000, "additional_messages must end with the user's message"))
        # DOC-CHATFLOW and cozepy put conversation_id in the body; STUDIO binds it from the query too.
        conversation_id = body.get("conversation_id") or request.query.get("conversation_id") or self._new_id()
        if not isinstance(conversation_id, str):
            raise _Refusal(_invalid_field("conversation_id"))
        if conversation_id in self._busy_conversations:
            raise _Refusal(_CONVERSATION_BUSY)
        history = self.conversation_histories.setdefault(conversation_id, [])
        turn = 1 + sum(1 for entry in history if entry["role"] == "assistant")
        history.extend({"role": message.role, "content": _text_of(message)} for message in messages)
        question = _text_of(messages[-1])
        if conversation_id in self._waiting_chatflows:
            # The turn answers the question node the previous turn stopped at: the run goes on to its end.
            self._waiting_chatflows.discard(conversation_id)
            scenario, answer = CHATFLOW_NORMAL, weather_for(question)
        elif workflow_id in _QUESTION_CHATFLOWS:
            scenario, answer = workflow_id, INTERRUPT_QUESTION
        else:
            scenario, answer = workflow_id, chatflow_answer(turn, question)
        record = _ChatRecord(
            chat_id=self._new_id(),
            conversation_id=conversation_id,
            bot_id=options.get("bot_id") or options["app_id"],
            answer_message_id=self._new_id(),
            verbose_message_id=self._new_id(),
            answer=answer,
            created_at=int(time.time()),
            path=_CHATFLOW_PATH,
            workflow_id=workflow_id,
            execute_id=self._new_id(),
        )
        # Kept with the chats: in STUDIO a chatflow turn is an agent run, which /v3/chat/cancel stops.
        self._chats[record.chat_id] = record
        received = ReceivedChat(_CHATFLOW_PATH, workflow_id, record.chat_id, conversation_id, messages, options)
        self._keep(self.received_chats, received)
        return record, scenario

    async def _write_chatflow(
        self, request: web.Request, response: web.StreamResponse, record: _ChatRecord, scenario: str
    ) -> None:
        event = _chatflow_event
        debug_url = _debug_url(record.execute_id, record.workflow_id)
        if scenario == CHATFLOW_FAILED:
            record.status = "failed"
            await response.write(event("conversation.chat.failed", _CHATFLOW_FAILURE))
            return
        await response.write(event("conversation.chat.created", record.chat("created")))
        await response.write(event("conversation.chat.in_progress", record.chat("in_progress")))
        pieces = split_answer(record.answer)
        for piece in pieces[:2]:
            delta = record.message(record.answer_message_id, "answer", piece)
            await response.write(event("conversation.message.delta", delta))
        if scenario == CHATFLOW_CUT:
            cut(request)
        if scenario == CHATFLOW_STALL:
            await stall()
        if scenario == CHATFLOW_ERROR_EVENT:
            # STUDIO's chatflow handler sends a failed run as `error` with its code as a string.
            record.status = "failed"
            await response.write(
                event("error", {"code": "5000", "msg": "workflow node failed", "debug_url": debug_url})
            )
            return
        for piece in pieces[2:]:
            delta = record.message(record.answer_message_id, "answer", piece)
            await response.write(event("conversation.message.delta", delta))
        self.conversation_histories[record.conversation_id].append({"role": "assistant", "content": record.answer})
        if scenario not in _QUESTION_CHATFLOWS:
            await self._write_answer_end(response, record, event=event, done={"debug_url": debug_url})
            return
        # The run stops at its question node and waits for the conversation's next turn.
        self._waiting_chatflows.add(record.conversation_id)
        record.status = "requires_action"
        question = record.message(record.answer_message_id, "answer", record.answer)
        await response.write(event("conversation.message.completed", question))
        if scenario == CHATFLOW_QUESTION:
            # DOC-CHATFLOW's example stream: the interrupt is a verbose message, and no chat event ends the turn.
            for content in (_VERBOSE_INTERRUPT, _VERBOSE_INTERRUPT_FINISH):
                verbose = record.message(self._new_id(), "verbose", content)
                await response.write(event("conversation.message.completed", verbose))
        else:
            # STUDIO (backend/application/workflow/chatflow.go, WorkflowInterrupted): a ChatFlowDetail
            # with status requires_action, its execute_id, and no required_action nor usage.
            waiting = {
                "id": record.chat_id,
                "conversation_id": record.conversation_id,
                "section_id": record.conversation_id,
                "status": "requires_action",
                "execute_id": record.execute_id,
            }
            await response.write(event("conversation.chat.requires_action", waiting))
        await response.write(event("done", {"debug_url": debug_url}))

    # --- workflows ---

    def _checked_run(self, request: web.Request) -> tuple[str, Any, str]:
        """A workflow run's workflow_id, parameters and execute_id, recorded; raises _Refusal."""
        body = request[BODY]
        if not isinstance(body, dict) or not isinstance(body.get("workflow_id"), str):
            raise _Refusal(_BAD_REQUEST)
        workflow_id: str = body["workflow_id"]
        if workflow_id == WORKFLOW_MISSING:
            raise _Refusal(_NOT_FOUND)
        options = _options(body, _WORKFLOW_OPTIONS)
        # An interrupted run's execute_id is what its interrupt's event_id begins with (STUDIO).
        interrupting = workflow_id in _INTERRUPTING_WORKFLOWS
        execute_id = execute_id_of(INTERRUPT_EVENT_ID) if interrupting else self._new_id()
        parameters = body.get("parameters")
        run = ReceivedWorkflowRun(request.path, workflow_id, parameters, options, execute_id)
        self._keep(self.received_workflow_runs, run)
        return workflow_id, parameters, execute_id

    async def _workflow_run(self, request: web.Request) -> web.StreamResponse:
        try:
            workflow_id, parameters, execute_id = self._checked_run(request)
        except _Refusal as refusal:
            return refusal.response()
        # `debug_url` must be present: cozepy picks the workflow-result shape by that key (spec §3.1).
        result: dict[str, Any] = {
            "code": 0,
            "msg": "",
            "data": workflow_output(parameters),
            "debug_url": _debug_url(execute_id, workflow_id),
            "execute_id": execute_id,
            "usage": workflow_usage(),
        }
        if workflow_id in _INTERRUPTING_WORKFLOWS:
            # A run that stopped at a question or input node: no output, the interrupt to resume (DOC-WF).
            result["data"] = ""
            result["interrupt_data"] = _interrupt_data(workflow_id, INTERRUPT_EVENT_ID)
        if workflow_id == WORKFLOW_BURST_CUT:
            raw = dumps(result).encode()
            response = web.StreamResponse(headers={"Content-Type": _JSON_CONTENT_TYPE})
            response.content_length = len(raw)
            async with self._watching(request, workflow_id):
                await response.prepare(request)
                await self._burst_then_hang_up(request, response, [raw[: len(raw) // 2]])
            return response
        return _json(result)

    async def _workflow_stream_run(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        if isinstance(body, dict) and body.get("workflow_id") == WORKFLOW_RATE_LIMITED:
            return _error(_RATE_LIMITED, status=429, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        try:
            workflow_id, parameters, execute_id = self._checked_run(request)
        except _Refusal as refusal:
            return refusal.response()
        messages = [
            _node_message("Message", f"收到参数：{dumps(parameters)}", seq=0, finished=False),
            _node_message("Message", "处理完成。", seq=1, finished=True),
            _node_message("End", workflow_output(parameters), seq=0, finished=True, usage=workflow_usage()),
        ]
        if workflow_id == WORKFLOW_NODE_IDS:
            node_execute_uuids = {title: self._new_id() for title in _NODE_IDS}
            for message in messages:
                title = message["node_title"]
                message.update(node_id=_NODE_IDS[title], node_execute_uuid=node_execute_uuids[title], node_type=title)
        if workflow_id in (WORKFLOW_INTERRUPT, WORKFLOW_INTERRUPT_TWICE):
            messages = [_node_message(INTERRUPT_NODE_TITLE, INTERRUPT_QUESTION, seq=0, finished=True)]
        if workflow_id == WORKFLOW_INPUT_NODE:
            messages = []  # an input node outputs no message: the Interrupt is all (STUDIO skips its messages)
        async with self._event_stream(request, workflow_id) as response:
            if workflow_id == WORKFLOW_CUT_AT_START:
                cut(request)
            if workflow_id == WORKFLOW_BURST_CUT:
                events = [
                    _workflow_event(index, "Message", _node_message("Message", piece, seq=index, finished=False))
                    for index, piece in enumerate(burst_pieces())
                ]
                await self._burst_then_hang_up(request, response, events)
            await self._write_workflow(request, response, workflow_id, messages, execute_id=execute_id)
        return response

    async def _workflow_stream_resume(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("workflow_id"), str)
            or not isinstance(body.get("resume_data"), str)
        ):
            return _error(_BAD_REQUEST)
        workflow_id: str = body["workflow_id"]
        if workflow_id == WORKFLOW_MISSING:
            return _error(_NOT_FOUND)
        event_id = body.get("event_id")
        if event_id not in (INTERRUPT_EVENT_ID, INTERRUPT_EVENT_ID_2, INPUT_EVENT_ID):
            return _error(_NO_EXECUTION)
        content = dumps({"output": weather_for(body["resume_data"])})
        messages = [_node_message("End", content, seq=0, finished=True, usage=workflow_usage())]
        # WORKFLOW_INTERRUPT's and WORKFLOW_INPUT_NODE's resumed runs finish; WORKFLOW_INTERRUPT_TWICE's asks
        # once more (its first resume), and every other scenario applies as in stream_run.
        scenario = workflow_id
        if workflow_id in (WORKFLOW_INTERRUPT, WORKFLOW_INPUT_NODE) or event_id == INTERRUPT_EVENT_ID_2:
            scenario = WORKFLOW_NORMAL
        if scenario == WORKFLOW_INTERRUPT_TWICE:
            messages = [_node_message(INTERRUPT_NODE_TITLE, INTERRUPT_QUESTION, seq=0, finished=True)]
        async with self._event_stream(request, workflow_id) as response:
            await self._write_workflow(
                request,
                response,
                scenario,
                messages,
                execute_id=execute_id_of(event_id),
                interrupt_event_id=INTERRUPT_EVENT_ID_2,
            )
        return response

    async def _write_workflow(
        self,
        request: web.Request,
        response: web.StreamResponse,
        scenario: str,
        messages: list[dict[str, Any]],
        *,
        execute_id: str,
        interrupt_event_id: str = INTERRUPT_EVENT_ID,
    ) -> None:
        event_ids = itertools.count()
        debug_url = _debug_url(execute_id, request[BODY]["workflow_id"])
        if messages:
            await response.write(_workflow_event(next(event_ids), "Message", messages[0]))
        if scenario in (WORKFLOW_ERROR_EVENT, WORKFLOW_ERROR_DEBUG_URL):
            # Coze ends the body after Error without a Done (and cozepy raises nothing).
            error = _WORKFLOW_ERROR if scenario == WORKFLOW_ERROR_EVENT else {**_WORKFLOW_ERROR, "debug_url": debug_url}
            await response.write(_workflow_event(next(event_ids), "Error", error))
            return
        if scenario == WORKFLOW_CUT:
            cut(request)
        if scenario == WORKFLOW_STALL:
            await stall()
        if scenario == WORKFLOW_PING:
            # PING must carry an id: line, or cozepy's 3-line parser desynchronises (spec §2.2).
            await response.write(_workflow_event(next(event_ids), "PING", {}))
        for message in messages[1:]:
            await response.write(_workflow_event(next(event_ids), "Message", message))
        if scenario in _INTERRUPTING_WORKFLOWS:
            if scenario == WORKFLOW_INPUT_NODE:
                # STUDIO sends the run's debug_url with the Interrupt too.
                interrupt = {
                    "interrupt_data": _interrupt_data(scenario, interrupt_event_id),
                    "node_title": INPUT_NODE_TITLE,
                    "debug_url": debug_url,
                }
            else:
                interrupt = {
                    "interrupt_data": _interrupt_data(scenario, interrupt_event_id),
                    "node_title": INTERRUPT_NODE_TITLE,
                }
            await response.write(_workflow_event(next(event_ids), "Interrupt", interrupt))
            if not self.done_after_interrupt:
                # Coze's own examples end an interrupted run's stream here, without Done.
                return
        if scenario == WORKFLOW_NO_DONE:
            return
        done = {} if scenario == WORKFLOW_EMPTY_DONE else {"debug_url": debug_url}
        await response.write(_workflow_event(next(event_ids), "Done", done))


def _node_message(
    node_title: str, content: str, *, seq: int, finished: bool, usage: dict[str, int] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "content": content,
        "content_type": "text",
        "node_is_finish": finished,
        "node_seq_id": str(seq),  # a string on the wire; cozepy's model requires it
        "node_title": node_title,
    }
    if usage is not None:
        message["usage"] = usage
    return message


def _interrupt_data(workflow_id: str, event_id: str) -> dict[str, Any]:
    """The interrupt_data of a question node, or (WORKFLOW_INPUT_NODE) of an input node with its
    required_parameters, in DOC-RESUME's example shape (data: the node's content as a JSON string)."""
    if workflow_id != WORKFLOW_INPUT_NODE:
        return {"data": INTERRUPT_QUESTION, "event_id": event_id, "type": INTERRUPT_TYPE}
    fields = [
        {"type": spec["type"], "name": name, "required": spec["required"]}
        for name, spec in INPUT_REQUIRED_PARAMETERS.items()
    ]
    return {
        "data": dumps({"content_type": "text", "content": dumps(fields)}),
        "event_id": INPUT_EVENT_ID,
        "type": INPUT_INTERRUPT_TYPE,
        "required_parameters": INPUT_REQUIRED_PARAMETERS,
    }
