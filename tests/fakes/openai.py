"""A fake OpenAI-compatible Chat Completions API: a real aiohttp server on 127.0.0.1.

It speaks the wire format of ``POST /v1/chat/completions`` (streamed by SSE, or one
``chat.completion`` object with ``"stream": false``), tool calls and content arrays included,
and refuses with HTTP 400 the requests OpenAI refuses for their shape (a tool message that
answers no call, an unanswered call, a tool_choice without tools, an unknown content part, an
image outside a user message). Behaviour is chosen per request by the request's ``model``
(the ``MODEL_*`` constants below); any other model answers normally. Every request is
recorded in `FakeOpenAI.requests`, and every client that goes away before its response was
finished is recorded in `FakeOpenAI.disconnects`.
The server itself is `tests.fakes._server.FakeUpstream`, shared with the Coze fake.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import secrets
import time
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
from tests.fakes._server import Disconnect as _BaseDisconnect

# --- Scenarios, selected by the request's model (any other model answers normally) ---
MODEL_NORMAL = "gpt-fake"  # the normal answer; any unlisted model does the same
MODEL_REASONING = "fake-reasoning"  # reasoning_content deltas (content null) before the answer deltas
MODEL_LENGTH = "fake-length"  # the normal answer, finish_reason "length"
MODEL_BAD_REQUEST = "fake-error-400"  # HTTP 400 invalid_request_error (code null)
MODEL_MISSING = "fake-error-404"  # HTTP 404 model_not_found
MODEL_RATE_LIMITED = "fake-error-429"  # HTTP 429 rate_limit_exceeded, Retry-After: 3
MODEL_SERVER_ERROR = "fake-error-500"  # HTTP 500 server_error
MODEL_CUT = "fake-cut"  # two content deltas, then the TCP connection is aborted mid chunked body
MODEL_STALL = "fake-stall"  # two content deltas (non-stream: nothing), then silence until the client leaves
MODEL_NO_DONE = "fake-no-done"  # the whole normal stream, usage included, then a clean end without [DONE]
MODEL_ERROR_IN_STREAM = "fake-error-in-stream"  # two deltas, an {"error"} chunk, end (non-stream: 200 + error)
MODEL_MALFORMED = "fake-malformed"  # two deltas, a data line that is not JSON, the rest (non-stream: bad JSON)
MODEL_SLOW = "fake-slow"  # the normal answer, one delta every FakeOpenAI.slow_interval seconds
MODEL_SPLIT_UTF8 = "fake-split-utf8"  # answer SPLIT_UTF8_ANSWER; each delta splits a UTF-8 char across two writes
MODEL_FLAKY = "fake-flaky"  # the first FakeOpenAI.flaky_failures requests of this model: HTTP 502; then normal
MODEL_RATE_LIMITED_NO_RETRY_AFTER = "fake-error-429-no-retry-after"  # HTTP 429 rate_limit_exceeded, no Retry-After
MODEL_RATE_LIMITED_ONCE = "fake-error-429-once"  # 1st request: HTTP 429, retry-after-ms: 200; then normal
MODEL_STALL_AT_START = "fake-stall-at-start"  # the role chunk, then silence before any content (non-stream: silence)
MODEL_UNKNOWN_EVENTS = "fake-unknown-events"  # the normal stream, after a comment, an `event: ping`, a foreign chunk
MODEL_FLOOD = "fake-flood"  # FLOOD_CHUNKS tiny deltas (flood_pieces()) as fast as the socket takes them, then stop
MODEL_BURST_CUT = "fake-burst-cut"  # stream: BURST_PIECES deltas (burst_pieces()) at once, then a hang-up;
#   non-stream: half the body, then a hang-up
MODEL_ECHO_AUTH = "fake-echo-auth"  # HTTP 400 whose message quotes every request header, Authorization too
MODEL_HUGE_ERROR = "fake-huge-error"  # HTTP 500 with a 1 MiB message
MODEL_NO_USAGE = "fake-no-usage"  # the normal answer without usage, stream_options or not (as some servers do)
MODEL_CUT_AT_START = "fake-cut-at-start"  # the role chunk (generation has begun), then the cut, no content
#   (non-stream: the headers, then the cut)
# Tool calling. Offered tools, these models call the first TOOLS_CALLED of them (or the one tool_choice
# names; with "none" they answer in text), finish_reason "tool_calls": streamed as OpenAI streams calls
# (the first delta of a call has index, id, type and function.name with arguments ""; later ones index
# and a piece of arguments), whole as message.tool_calls with content null. A request whose last message
# is a tool output is answered in text: tools_answer(the trailing tool outputs).
MODEL_TOOLS = "fake-tools"  # each call's deltas in turn, one call per delta (OpenAI's own order)
MODEL_TOOLS_INTERLEAVED = "fake-tools-interleaved"  # INTERLEAVED_TEXT first, then every call's first delta,
#   then the argument pieces round-robin by index, the first round of pieces in one delta (several entries)
MODEL_TOOLS_CUT = "fake-tools-cut"  # the first call's first delta and TOOLS_CUT_AFTER argument pieces, then the
#   cut (non-stream: half the body, then the cut)

# --- Deterministic values tests can assert on ---
DEFAULT_API_KEY = "sk-fake-test-key-0123456789"
DEFAULT_ANSWER = "Hello from the fake model."
SPLIT_UTF8_ANSWER = "你好，世界！"
ANSWER_PIECE_CHARS = 6  # the answer is streamed in content deltas of this many characters
REASONING_PIECES = ("The user said hi. ", "A friendly greeting fits.")
PROMPT_TOKENS = 17
COMPLETION_TOKENS = 6
TOTAL_TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS
RETRY_AFTER_SECONDS = 3
SHORT_RETRY_AFTER_MS = 200  # MODEL_RATE_LIMITED_ONCE's retry-after-ms (OpenAI's header; Retry-After: 1 beside it)
TOOLS_CALLED = 2  # how many of the offered tools a tool model calls at most
ARGUMENT_PIECE_CHARS = 5  # streamed tool call arguments arrive in pieces of this many characters
TOOLS_CUT_AFTER = 2  # argument pieces MODEL_TOOLS_CUT sends before the cut
INTERLEAVED_TEXT = "Let me check both."  # MODEL_TOOLS_INTERLEAVED's text before its calls

_AUTH_FAILED = (
    401,
    {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"},
)
_BAD_REQUEST = (
    400,
    {
        "message": "Invalid value for 'temperature': must be between 0 and 2.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": None,
    },
)
_RATE_LIMITED = (
    429,
    {
        "message": "Rate limit reached for requests. Please try again in 3s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    },
)
_SERVER_ERROR = (
    500,
    {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    },
)
_BAD_GATEWAY = (502, {"message": "Bad gateway.", "type": "server_error", "param": None, "code": None})
_STREAM_ERROR = {"message": "overloaded", "type": "server_error"}
_TOOL_MODELS = frozenset({MODEL_TOOLS, MODEL_TOOLS_INTERLEAVED, MODEL_TOOLS_CUT})
_CONTENT_PART_TYPES = ("text", "image_url", "input_audio", "file")

# Per-request storage (beside the shared LOG_ID, which holds the x-request-id): the completion id.
_COMPLETION_ID = web.RequestKey("completion_id", str)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case keys
    json: Any  # the parsed JSON body, or None when there was no (valid) JSON body
    time: float  # time.monotonic()
    request_id: str  # the x-request-id the fake answered with
    completion_id: str  # the `id` of the chat.completion(.chunk) objects it answered with
    client_port: int  # the client's TCP port: equal ports mean a reused (pooled) connection


class Disconnect(_BaseDisconnect):
    """A client that went away before its response was finished (``scenario`` is the request's model)."""

    @property
    def request_id(self) -> str:
        """The x-request-id the fake answered the request with."""
        return self.log_id


def split_answer(answer: str) -> list[str]:
    """The content deltas the fake streams for an answer; joined they equal the answer."""
    return split_text(answer, ANSWER_PIECE_CHARS)


def tool_arguments(index: int) -> str:
    """The JSON arguments of a tool model's call ``index`` (0-based), whatever the tool."""
    return dumps({"city": ("北京", "Paris", "Lagos")[index % 3], "days": index + 1})


def tool_call_id(completion_id: str, index: int) -> str:
    """The id of a tool model's call ``index`` in the completion ``completion_id``."""
    return f"call_{completion_id.removeprefix('chatcmpl-')}_{index}"


def tools_answer(outputs: list[str]) -> str:
    """What a tool model answers once given tool outputs: each output, in order."""
    return "From the tools: " + " | ".join(outputs)


def usage() -> dict[str, int]:
    """The usage every finished answer reports."""
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": TOTAL_TOKENS}


def _error(status_and_error: tuple[int, dict[str, Any]], headers: dict[str, str] | None = None) -> web.Response:
    status, error = status_and_error
    return web.json_response({"error": error}, status=status, headers=headers, dumps=dumps)


def _data(value: Any) -> bytes:
    return f"data: {dumps(value)}\n\n".encode()


class FakeOpenAI(FakeUpstream[RecordedRequest]):
    """A fake OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1."""

    log_id_header: ClassVar[str] = "x-request-id"
    base_path: ClassVar[str] = "/v1"
    disconnect_type: ClassVar[type[_BaseDisconnect]] = Disconnect

    def __init__(self, api_key: str = DEFAULT_API_KEY, answer: str = DEFAULT_ANSWER) -> None:
        super().__init__(credential=api_key)
        self.api_key = api_key
        self.answer = answer
        self._ids = itertools.count(1)

    # --- plumbing ---

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self._chat_completions)

    def _record(self, request: web.Request, body: Any) -> RecordedRequest:
        request[_COMPLETION_ID] = completion_id = f"chatcmpl-fake{next(self._ids):04d}"
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        return RecordedRequest(
            method=request.method,
            path=request.path,
            headers={key.lower(): value for key, value in request.headers.items()},
            json=body,
            time=time.monotonic(),
            request_id=request[LOG_ID],
            completion_id=completion_id,
            client_port=peer[1] if peer else 0,
        )

    def _new_log_id(self) -> str:
        return f"req_{secrets.token_hex(16)}"

    def _auth_failed(self) -> web.Response:
        return _error(_AUTH_FAILED)

    # --- chat completions ---

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = request[BODY]
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error((400, {"message": "'messages' is a required property", "type": "invalid_request_error"}))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error((400, {"message": "you must provide a model parameter", "type": "invalid_request_error"}))
        if refusal := _shape_error(body):
            return _error((400, {"type": "invalid_request_error", "code": None, **refusal}))
        if early := self._scenario_error(model, request):
            return early
        if body.get("stream") is True:
            include_usage = (body.get("stream_options") or {}).get("include_usage") is True and model != MODEL_NO_USAGE
            async with self._event_stream(request, model, "text/event-stream; charset=utf-8") as response:
                await self._write_stream(request, response, model, include_usage=include_usage)
            return response
        async with self._watching(request, model):
            return await self._whole_answer(request, model)
        return web.Response(status=499)  # the client left while a write was pending; nobody reads this

    def _scenario_error(self, model: str, request: web.Request) -> web.Response | None:
        if model == MODEL_ECHO_AUTH:
            return _error((400, {"message": echoed_headers(request), "type": "invalid_request_error"}))
        if model == MODEL_HUGE_ERROR:
            return _error((500, {"message": huge_error_text(), "type": "server_error"}))
        if model == MODEL_BAD_REQUEST:
            return _error(_BAD_REQUEST)
        if model == MODEL_MISSING:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return _error(
                (404, {"message": message, "type": "invalid_request_error", "param": None, "code": "model_not_found"})
            )
        if model == MODEL_RATE_LIMITED:
            return _error(_RATE_LIMITED, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if model == MODEL_RATE_LIMITED_NO_RETRY_AFTER:
            return _error(_RATE_LIMITED)
        if model == MODEL_RATE_LIMITED_ONCE and self._fails_this_time(model, 1):
            return _error(_RATE_LIMITED, headers={"retry-after-ms": str(SHORT_RETRY_AFTER_MS), "Retry-After": "1"})
        if model == MODEL_SERVER_ERROR:
            return _error(_SERVER_ERROR)
        if model == MODEL_FLAKY and self._fails_this_time(model, self.flaky_failures):
            return _error(_BAD_GATEWAY)
        return None

    def _answer(self, model: str, body: dict[str, Any]) -> str:
        if model in _TOOL_MODELS and body["messages"][-1].get("role") == "tool":
            return tools_answer(_trailing_tool_outputs(body["messages"]))
        return SPLIT_UTF8_ANSWER if model == MODEL_SPLIT_UTF8 else self.answer

    def _tool_calls(self, request: web.Request, model: str) -> list[dict[str, Any]]:
        """The calls a tool model makes for this request (none when it answers in text)."""
        body = request[BODY]
        tools = body.get("tools") or []
        choice = body.get("tool_choice")
        if model not in _TOOL_MODELS or not tools or choice == "none" or body["messages"][-1].get("role") == "tool":
            return []
        if isinstance(choice, dict):
            names = [choice["function"]["name"]]
        else:
            names = [tool["function"]["name"] for tool in tools[:TOOLS_CALLED]]
        return [
            {
                "id": tool_call_id(request[_COMPLETION_ID], index),
                "type": "function",
                "function": {"name": name, "arguments": tool_arguments(index)},
            }
            for index, name in enumerate(names)
        ]

    async def _write_stream(
        self, request: web.Request, response: web.StreamResponse, model: str, *, include_usage: bool
    ) -> None:
        completion_id = request[_COMPLETION_ID]
        created = int(time.time())
        body = request[BODY]

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            value: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            if include_usage:
                value["usage"] = None  # OpenAI sends null usage on every chunk but the last
            return _data(value)

        await response.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        if model == MODEL_STALL_AT_START:
            await stall()
        if model == MODEL_CUT_AT_START:
            cut(request)
        if model == MODEL_BURST_CUT:
            await self._burst_then_hang_up(request, response, [chunk({"content": piece}) for piece in burst_pieces()])
        if model == MODEL_FLOOD:
            for piece in flood_pieces():
                await self._write_flood_delta(response, chunk({"content": piece}))
        if model == MODEL_UNKNOWN_EVENTS:
            # What some servers interleave: a heartbeat comment, a named event, a chunk of another kind.
            await response.write(b": OPENROUTER PROCESSING\n\n")
            await response.write(b'event: ping\ndata: {"type":"ping"}\n\n')
            foreign = {"id": completion_id, "object": "chat.completion.annotations", "annotations": []}
            await response.write(_data(foreign))
        if model == MODEL_REASONING:
            for piece in REASONING_PIECES:
                await response.write(chunk({"content": None, "reasoning_content": piece}))
        if calls := self._tool_calls(request, model):
            if model == MODEL_TOOLS_INTERLEAVED:
                await response.write(chunk({"content": INTERLEAVED_TEXT}))
            for position, delta in enumerate(_tool_call_deltas(calls, interleaved=model == MODEL_TOOLS_INTERLEAVED)):
                await response.write(chunk({"tool_calls": delta}))
                if model == MODEL_TOOLS_CUT and position == TOOLS_CUT_AFTER:
                    cut(request)  # the first call's first delta and TOOLS_CUT_AFTER pieces of its arguments went out
            await response.write(chunk({}, "tool_calls"))
            await self._finish_stream(response, model, completion_id, created, include_usage=include_usage)
            return
        pieces = [] if model == MODEL_FLOOD else split_answer(self._answer(model, body))
        for index, piece in enumerate(pieces[:2]):
            await self._write_delta(response, model, chunk({"content": piece}), slow=index > 0)
        if model == MODEL_ERROR_IN_STREAM:
            await response.write(_data({"error": _STREAM_ERROR}))
            return
        if model == MODEL_CUT:
            cut(request)
        if model == MODEL_STALL:
            await stall()
        if model == MODEL_MALFORMED:
            await response.write(b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
        for piece in pieces[2:]:
            await self._write_delta(response, model, chunk({"content": piece}), slow=True)
        await response.write(chunk({}, "length" if model == MODEL_LENGTH else "stop"))
        await self._finish_stream(response, model, completion_id, created, include_usage=include_usage)

    async def _finish_stream(
        self, response: web.StreamResponse, model: str, completion_id: str, created: int, *, include_usage: bool
    ) -> None:
        """The usage chunk (when asked for) and ``data: [DONE]``."""
        if include_usage:
            final = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": usage(),
            }
            await response.write(_data(final))
        if model == MODEL_NO_DONE:
            return
        await response.write(b"data: [DONE]\n\n")

    async def _write_delta(self, response: web.StreamResponse, model: str, payload: bytes, *, slow: bool) -> None:
        if slow and model == MODEL_SLOW:
            await asyncio.sleep(self.slow_interval)
        if model == MODEL_SPLIT_UTF8:
            await write_split_utf8(response, payload)
        else:
            await response.write(payload)

    async def _whole_answer(self, request: web.Request, model: str) -> web.StreamResponse:
        """The ``"stream": false`` answer: one chat.completion object."""
        if model in (MODEL_STALL, MODEL_STALL_AT_START):
            await stall()
        if model == MODEL_ERROR_IN_STREAM:
            # Some OpenAI-compatible gateways answer a failure with HTTP 200 and an error object.
            return web.json_response({"error": _STREAM_ERROR}, dumps=dumps)
        if model == MODEL_MALFORMED:
            return web.Response(text='{"id": "chatcmpl-broken", "choices": [', content_type="application/json")
        message: dict[str, Any] = {"role": "assistant", "content": self._answer(model, request[BODY]), "refusal": None}
        if model == MODEL_REASONING:
            message["reasoning_content"] = "".join(REASONING_PIECES)
        finish_reason = "length" if model == MODEL_LENGTH else "stop"
        if calls := self._tool_calls(request, model):
            message.update(content=None, tool_calls=calls)
            finish_reason = "tool_calls"
        completion = {
            "id": request[_COMPLETION_ID],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": None if model == MODEL_NO_USAGE else usage(),
        }
        if model == MODEL_CUT_AT_START:
            # The headers (the model is generating), then the connection goes before any body.
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(dumps(completion))
            await response.prepare(request)
            cut(request)
        if model == MODEL_BURST_CUT:
            raw = dumps(completion).encode()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(raw)
            await response.prepare(request)
            await self._burst_then_hang_up(request, response, [raw[: len(raw) // 2]])
        if model in (MODEL_CUT, MODEL_TOOLS_CUT):
            # Headers and half the body, then the connection goes.
            raw = dumps(completion).encode()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(raw)
            await response.prepare(request)
            await response.write(raw[: len(raw) // 2])
            assert request.transport is not None
            request.transport.abort()
            return response
        return web.json_response(completion, dumps=dumps)


def _tool_call_deltas(calls: list[dict[str, Any]], *, interleaved: bool) -> list[list[dict[str, Any]]]:
    """The ``delta.tool_calls`` lists that stream ``calls``, in order."""
    firsts = [
        [
            {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
        ]
        for index, call in enumerate(calls)
    ]
    pieces = [
        [
            {"index": index, "function": {"arguments": piece}}
            for piece in split_text(call["function"]["arguments"], ARGUMENT_PIECE_CHARS)
        ]
        for index, call in enumerate(calls)
    ]
    if not interleaved:
        return [
            delta for first, own in zip(firsts, pieces, strict=True) for delta in (first, *([piece] for piece in own))
        ]
    rounds = [[own[turn] for own in pieces if turn < len(own)] for turn in range(max(len(own) for own in pieces))]
    # The first round in one delta (several entries, as some servers send), the rest one piece per delta.
    return [*firsts, rounds[0], *([piece] for later in rounds[1:] for piece in later)]


def _trailing_tool_outputs(messages: list[dict[str, Any]]) -> list[str]:
    """The contents of the tool messages that end ``messages``, in order."""
    outputs: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        content = message.get("content")
        outputs.append(content if isinstance(content, str) else "".join(part.get("text", "") for part in content))
    return outputs[::-1]


def _shape_error(body: dict[str, Any]) -> dict[str, Any] | None:
    """The message and param of OpenAI's HTTP 400 for a request of a shape it refuses; None when it takes it."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if choice is not None and not tools:
        return {
            "message": "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            "param": "tool_choice",
        }
    names = [tool.get("function", {}).get("name") for tool in tools or []]
    if isinstance(choice, dict) and choice.get("function", {}).get("name") not in names:
        return {"message": "Invalid value for 'tool_choice': no function named so in 'tools'.", "param": "tool_choice"}
    unanswered: list[str] = []  # the ids of the last assistant turn's calls not answered yet
    for index, message in enumerate(body["messages"]):
        role = message.get("role")
        if role == "tool":
            if message.get("tool_call_id") not in unanswered:
                return {
                    "message": "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    "message with 'tool_calls'.",
                    "param": f"messages.[{index}].role",
                }
            unanswered.remove(message["tool_call_id"])
            continue
        if unanswered:
            return {
                "message": "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                + ", ".join(unanswered),
                "param": f"messages.[{index}].role",
            }
        unanswered = [call["id"] for call in message.get("tool_calls") or []]
        content = message.get("content")
        for part_index, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type")
            if kind not in _CONTENT_PART_TYPES:
                return {
                    "message": f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url', 'input_audio' "
                    "and 'file'.",
                    "param": f"messages.[{index}].content.[{part_index}].type",
                }
            if kind == "image_url" and role != "user":
                return {
                    "message": f"Image URLs are only allowed for messages with role 'user', but this message with "
                    f"role '{role}' contains an image URL.",
                    "param": f"messages.[{index}].content.[{part_index}].type",
                }
            if kind == "image_url" and not _takes_image_url(part.get("image_url", {}).get("url")):
                return {
                    "message": "You uploaded an unsupported image. Please make sure your image has of one the "
                    "following formats: ['png', 'jpeg', 'gif', 'webp'].",
                    "param": f"messages.[{index}].content.[{part_index}].image_url.url",
                }
    if unanswered:
        return {
            "message": "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            "'tool_call_id'. The following tool_call_ids did not have response messages: " + ", ".join(unanswered),
            "param": "messages",
        }
    return None


def _takes_image_url(url: object) -> bool:
    """Whether OpenAI takes ``url`` as an image: http(s), or a base64 data URL of png, jpeg, gif or webp."""
    if not isinstance(url, str):
        return False
    if url.startswith(("http://", "https://")):
        return True
    header, comma, data = url.partition(",")
    if not comma or header not in {f"data:image/{kind};base64" for kind in ("png", "jpeg", "gif", "webp")}:
        return False
    try:
        base64.b64decode(data, validate=True)
    except ValueError:
        return False
    return True
