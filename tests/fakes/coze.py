"""A fake Coze Open API: a real aiohttp server on 127.0.0.1 that speaks the wire format cozepy 0.20.0 expects.

The wire format follows /work/shared/docs/coze-wire.md (§§1-4, checklist in §7). Behaviour is chosen per
request by the chat `bot_id` or the workflow `workflow_id` (the `BOT_*` / `WORKFLOW_*` constants below);
any other id behaves normally. Every request is recorded in `FakeCoze.requests` (`wait_for_requests`
waits for one, e.g. the gateway's `/v3/chat/cancel`), the ids of every chat created in
`FakeCoze.created_chats`, and every client that goes away before its stream was finished in
`FakeCoze.disconnects`. The server itself (recording, disconnects, cutting and stalling) is
`tests.fakes._server.FakeUpstream`, shared with the OpenAI fake.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

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
BOT_REQUIRES_ACTION = "bot-requires-action"  # conversation.chat.requires_action with one tool call, done
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
INTERRUPT_EVENT_ID = "7404830425073352713/2769808280134765896"
INTERRUPT_EVENT_ID_2 = "7404830425073352713/2769808280134765999"  # WORKFLOW_INTERRUPT_TWICE's second interrupt
INTERRUPT_TYPE = 2  # question node
INTERRUPT_QUESTION = "请问你想查看哪个城市？"
INTERRUPT_NODE_TITLE = "问答"
NO_CLOSE_SECONDS = 3.0

_SCENARIO_ANSWERS = {BOT_SPLIT_UTF8: SPLIT_UTF8_ANSWER, BOT_LINE_SEPARATORS: LINE_SEPARATORS_ANSWER}
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
_NOT_CANCELLABLE = (4104, "The chat is not in progress and cannot be cancelled")
_TERMINAL_STATUSES = ("completed", "failed", "requires_action", "canceled")
_DOC_SHAPED_FAILURE = {"code": 701231, "msg": "error"}  # DOC-CHAT's own example data for chat.failed
_NO_EXECUTION = (4314, "execution record not found")
_EVENT_INTERVAL_ERROR = {"code": 5000, "msg": "event interval error"}
_ERROR_EVENT = {"code": 5000, "msg": "internal error"}
_WORKFLOW_ERROR = {"error_code": 5000, "error_message": "workflow node failed"}
_VERBOSE_FINISH = json.dumps(
    {
        "msg_type": "generate_answer_finish",
        "data": '{"finish_reason":0,"FinData":""}',
        "from_module": None,
        "from_unit": None,
    },
    separators=(",", ":"),
)


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


@dataclass
class _ChatRecord:
    """Ids of one chat, kept so retrieve, message list and cancel can answer for it."""

    chat_id: str
    conversation_id: str
    bot_id: str
    answer_message_id: str
    verbose_message_id: str
    answer: str
    created_at: int
    status: str = "in_progress"

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
            "last_error": {"code": 0, "msg": ""},
            "status": status,
            "usage": usage,
        }
        if status == "completed":
            chat["completed_at"] = int(time.time())
        chat.update(extra)
        return chat

    def message(self, message_id: str, message_type: str, content: str, **extra: Any) -> dict[str, Any]:
        """An assistant Message object of this chat."""
        return {
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


def _workflow_event(event_id: int, name: str, data: Any) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {dumps(data)}\n\n".encode()


def _debug_url(execute_id: str, workflow_id: str) -> str:
    return (
        f"https://www.coze.cn/work_flow?execute_id={execute_id}&space_id=7361424235321600000&workflow_id={workflow_id}"
    )


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
        # Random start so ids differ between fakes; still 19 digits like Coze's snowflake ids.
        self._ids = itertools.count(7_400_000_000_000_000_000 + secrets.randbelow(10**16))
        self._log_ids = itertools.count(1)
        self._chats: dict[str, _ChatRecord] = {}
        self._busy_conversations: set[str] = set()
        self.created_chats: list[CreatedChat] = []

    def forget(self) -> None:
        """Drop the records, and the chats too: their retrieve and cancel then answer "invalid chat"."""
        super().forget()
        self._chats.clear()
        self.created_chats.clear()
        self.cancelled_chats.clear()

    # --- plumbing ---

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v3/chat", self._chat)
        router.add_route("POST", "/v3/chat/retrieve", self._retrieve)
        router.add_route("GET", "/v3/chat/retrieve", self._retrieve)
        router.add_get("/v3/chat/message/list", self._message_list)
        router.add_post("/v3/chat/cancel", self._cancel)
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
        stream = body.get("stream") is True
        if not stream and body.get("auto_save_history", True) is False:
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
        )
        self._chats[record.chat_id] = record
        self.created_chats.append(CreatedChat(record.chat_id, record.conversation_id, bot_id))
        if not stream:
            # Coze answers at once with in_progress; the fake's chat is done by the first retrieve.
            record.status = "completed"
            return _ok(record.chat("in_progress"))
        self._busy_conversations.add(conversation_id)
        try:
            headers = {"Content-Encoding": "gzip"} if bot_id == BOT_BURST_CUT_GZIP else None
            async with self._event_stream(request, bot_id, headers=headers) as response:
                await self._write_chat(request, response, record)
            return response
        finally:
            if record.status in _TERMINAL_STATUSES:
                self._busy_conversations.discard(conversation_id)
            else:
                # The client left (or the connection broke): Coze keeps running the chat.
                asyncio.get_running_loop().call_later(self.orphan_seconds, self._end_chat, record, "completed")

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
        if scenario == BOT_REQUIRES_ACTION:
            record.status = "requires_action"
            await response.write(
                _chat_event("conversation.chat.requires_action", record.chat("requires_action", **_tool_call()))
            )
            await response.write(_chat_event("done", "[DONE]"))
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
            record.status = "failed"
            failed = record.chat("failed", failed_at=int(time.time()), last_error=_EVENT_INTERVAL_ERROR)
            await response.write(_chat_event("conversation.chat.failed", failed))
            await response.write(_chat_event("done", "[DONE]"))
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

        answer = record.message(record.answer_message_id, "answer", record.answer)
        await response.write(_chat_event("conversation.message.completed", answer))
        verbose = record.message(record.verbose_message_id, "verbose", _VERBOSE_FINISH)
        await response.write(_chat_event("conversation.message.completed", verbose))
        if scenario == BOT_VERBOSE_AND_UNKNOWN:
            follow_up = record.message(self._new_id(), "follow_up", FOLLOW_UP_QUESTION)
            await response.write(_chat_event("conversation.message.completed", follow_up))
        if scenario == BOT_FOLLOW_UPS:
            # Coze sends each suggestion as its own follow_up message, after the answer and verbose.
            for question in FOLLOW_UP_QUESTIONS:
                follow_up = record.message(self._new_id(), "follow_up", question)
                await response.write(_chat_event("conversation.message.completed", follow_up))
        record.status = "completed"
        await response.write(_chat_event("conversation.chat.completed", record.chat("completed")))
        await response.write(_chat_event("done", "[DONE]"))
        if scenario == BOT_NO_CLOSE:
            await asyncio.sleep(self.no_close_seconds)

    def _end_chat(self, record: _ChatRecord, status: str) -> None:
        """A chat that still ran ends (it completes on its own, or a cancel landed); its conversation is free."""
        if record.status not in _TERMINAL_STATUSES:
            record.status = status
            self._busy_conversations.discard(record.conversation_id)

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

    # --- workflows ---

    async def _workflow_run(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        if not isinstance(body, dict) or not isinstance(body.get("workflow_id"), str):
            return _error(_BAD_REQUEST)
        workflow_id: str = body["workflow_id"]
        if workflow_id == WORKFLOW_MISSING:
            return _error(_NOT_FOUND)
        execute_id = self._new_id()
        # `debug_url` must be present: cozepy picks the workflow-result shape by that key (spec §3.1).
        result: dict[str, Any] = {
            "code": 0,
            "msg": "",
            "data": workflow_output(body.get("parameters")),
            "debug_url": _debug_url(execute_id, workflow_id),
            "execute_id": execute_id,
            "usage": workflow_usage(),
        }
        if workflow_id in (WORKFLOW_INTERRUPT, WORKFLOW_INTERRUPT_TWICE):
            # A run that stopped at a question node: no output, the interrupt to resume (DOC-WF).
            result["data"] = ""
            result["interrupt_data"] = _interrupt_data(INTERRUPT_EVENT_ID)
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
        if not isinstance(body, dict) or not isinstance(body.get("workflow_id"), str):
            return _error(_BAD_REQUEST)
        workflow_id: str = body["workflow_id"]
        if workflow_id == WORKFLOW_MISSING:
            return _error(_NOT_FOUND)
        if workflow_id == WORKFLOW_RATE_LIMITED:
            return _error(_RATE_LIMITED, status=429, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        parameters = body.get("parameters")
        messages = [
            _node_message("Message", f"收到参数：{dumps(parameters)}", seq=0, finished=False),
            _node_message("Message", "处理完成。", seq=1, finished=True),
            _node_message("End", workflow_output(parameters), seq=0, finished=True, usage=workflow_usage()),
        ]
        if workflow_id in (WORKFLOW_INTERRUPT, WORKFLOW_INTERRUPT_TWICE):
            messages = [_node_message(INTERRUPT_NODE_TITLE, INTERRUPT_QUESTION, seq=0, finished=True)]
        async with self._event_stream(request, workflow_id) as response:
            if workflow_id == WORKFLOW_CUT_AT_START:
                cut(request)
            if workflow_id == WORKFLOW_BURST_CUT:
                events = [
                    _workflow_event(index, "Message", _node_message("Message", piece, seq=index, finished=False))
                    for index, piece in enumerate(burst_pieces())
                ]
                await self._burst_then_hang_up(request, response, events)
            await self._write_workflow(request, response, workflow_id, messages)
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
        if body.get("event_id") not in (INTERRUPT_EVENT_ID, INTERRUPT_EVENT_ID_2):
            return _error(_NO_EXECUTION)
        content = dumps({"output": f"{body['resume_data']}：晴，25°C"})
        messages = [_node_message("End", content, seq=0, finished=True, usage=workflow_usage())]
        # WORKFLOW_INTERRUPT's resumed run finishes; WORKFLOW_INTERRUPT_TWICE's asks once more (its first
        # resume), and every other scenario applies as in stream_run.
        scenario = workflow_id
        if workflow_id == WORKFLOW_INTERRUPT or body.get("event_id") == INTERRUPT_EVENT_ID_2:
            scenario = WORKFLOW_NORMAL
        if scenario == WORKFLOW_INTERRUPT_TWICE:
            messages = [_node_message(INTERRUPT_NODE_TITLE, INTERRUPT_QUESTION, seq=0, finished=True)]
        async with self._event_stream(request, workflow_id) as response:
            await self._write_workflow(request, response, scenario, messages, interrupt_event_id=INTERRUPT_EVENT_ID_2)
        return response

    async def _write_workflow(
        self,
        request: web.Request,
        response: web.StreamResponse,
        scenario: str,
        messages: list[dict[str, Any]],
        *,
        interrupt_event_id: str = INTERRUPT_EVENT_ID,
    ) -> None:
        event_ids = itertools.count()
        await response.write(_workflow_event(next(event_ids), "Message", messages[0]))
        if scenario == WORKFLOW_ERROR_EVENT:
            # Coze ends the body after Error without a Done (and cozepy raises nothing).
            await response.write(_workflow_event(next(event_ids), "Error", _WORKFLOW_ERROR))
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
        if scenario in (WORKFLOW_INTERRUPT, WORKFLOW_INTERRUPT_TWICE):
            interrupt = {"interrupt_data": _interrupt_data(interrupt_event_id), "node_title": INTERRUPT_NODE_TITLE}
            await response.write(_workflow_event(next(event_ids), "Interrupt", interrupt))
            if not self.done_after_interrupt:
                # Coze's own examples end an interrupted run's stream here, without Done.
                return
        if scenario == WORKFLOW_NO_DONE:
            return
        done = {"debug_url": _debug_url(self._new_id(), request[BODY]["workflow_id"])}
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


def _interrupt_data(event_id: str) -> dict[str, Any]:
    return {"data": INTERRUPT_QUESTION, "event_id": event_id, "type": INTERRUPT_TYPE}


def _tool_call() -> dict[str, Any]:
    return {
        "required_action": {
            "type": "submit_tool_outputs",
            "submit_tool_outputs": {
                "tool_calls": [
                    {
                        "id": TOOL_CALL_ID,
                        "type": "function",
                        "function": {"name": TOOL_CALL_NAME, "arguments": TOOL_CALL_ARGUMENTS},
                    }
                ]
            },
        }
    }
