"""A fake OpenAI-compatible Chat Completions API: a real aiohttp server on 127.0.0.1.

It speaks the wire format of ``POST /v1/chat/completions`` (streamed by SSE, or one
``chat.completion`` object with ``"stream": false``). Behaviour is chosen per request by
the request's ``model`` (the ``MODEL_*`` constants below); any other model answers
normally. Every request is recorded in `FakeOpenAI.requests`, and every client that
goes away before its response was finished is recorded in `FakeOpenAI.disconnects`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import web

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
SPLIT_WRITE_PAUSE = 0.01  # long enough for the two halves to leave as separate TCP segments

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
_STREAM_ERROR = {"message": "overloaded", "type": "server_error"}

# Per-request storage: the x-request-id the fake answers with, the parsed JSON body, the completion id.
_REQUEST_ID = web.RequestKey("request_id", str)
_BODY: web.RequestKey[Any] = web.RequestKey("json_body")
_COMPLETION_ID = web.RequestKey("completion_id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


@dataclass(frozen=True)
class Disconnect:
    """A client that went away before its response was finished."""

    path: str
    scenario: str  # the request's model
    time: float  # time.monotonic()
    request_id: str


def split_answer(answer: str) -> list[str]:
    """The content deltas the fake streams for an answer; joined they equal the answer."""
    return [answer[i : i + ANSWER_PIECE_CHARS] for i in range(0, len(answer), ANSWER_PIECE_CHARS)]


def usage() -> dict[str, int]:
    """The usage every finished answer reports."""
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": TOTAL_TOKENS}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _error(status_and_error: tuple[int, dict[str, Any]], headers: dict[str, str] | None = None) -> web.Response:
    status, error = status_and_error
    return web.json_response({"error": error}, status=status, headers=headers, dumps=_dumps)


def _data(value: Any) -> bytes:
    return f"data: {_dumps(value)}\n\n".encode()


class _ServerCut(Exception):
    """Raised inside a response after the fake aborted the connection on purpose (not a disconnect)."""


class FakeOpenAI:
    """A fake OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1."""

    def __init__(self, api_key: str = DEFAULT_API_KEY, answer: str = DEFAULT_ANSWER) -> None:
        self.api_key = api_key
        self.answer = answer
        self.base_url = ""
        self.requests: list[RecordedRequest] = []
        self.disconnects: list[Disconnect] = []
        self.open_streams = 0
        self.slow_interval = 1.0
        self._runner: web.AppRunner | None = None
        self._ids = itertools.count(1)
        self._stream_transports: set[asyncio.Transport] = set()
        self._disconnect_seen = 0
        self._disconnect_event = asyncio.Event()
        self._stopping = False

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and start serving."""
        self._stopping = False
        app = web.Application(middlewares=[self._record_and_authenticate])
        app.on_response_prepare.append(self._add_request_id)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        # aiohttp leaves a handler running after its client left unless told to cancel it; the
        # cancellation is how a vanished client gets noticed (and recorded) within milliseconds.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}/v1"

    async def stop(self) -> None:
        """Stop serving; responses still open are cut without being recorded as disconnects."""
        if self._runner is None:
            return
        self._stopping = True
        for transport in list(self._stream_transports):
            transport.abort()
        await self._runner.cleanup()
        self._runner = None

    async def wait_for_disconnect(self, timeout: float = 2.0) -> Disconnect:
        """Return the next disconnect not yet returned by this method, waiting up to `timeout` seconds.

        Raises:
            TimeoutError: no new disconnect was recorded in time.
        """
        async with asyncio.timeout(timeout):
            while len(self.disconnects) <= self._disconnect_seen:
                self._disconnect_event.clear()
                await self._disconnect_event.wait()
        disconnect = self.disconnects[self._disconnect_seen]
        self._disconnect_seen += 1
        return disconnect

    # --- plumbing ---

    @web.middleware
    async def _record_and_authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[_REQUEST_ID] = request_id = f"req_{secrets.token_hex(16)}"
        request[_COMPLETION_ID] = completion_id = f"chatcmpl-fake{next(self._ids):04d}"
        raw = await request.read()
        body: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        request[_BODY] = body
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers={key.lower(): value for key, value in request.headers.items()},
                json=body,
                time=time.monotonic(),
                request_id=request_id,
                completion_id=completion_id,
                client_port=peer[1] if peer else 0,
            )
        )
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(_AUTH_FAILED)
        return await handler(request)

    async def _add_request_id(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-request-id"] = request.get(_REQUEST_ID) or f"req_{secrets.token_hex(16)}"

    def _record_disconnect(self, request: web.Request, scenario: str) -> None:
        self.disconnects.append(Disconnect(request.path, scenario, time.monotonic(), request[_REQUEST_ID]))
        self._disconnect_event.set()

    @contextlib.asynccontextmanager
    async def _watching(self, request: web.Request, scenario: str) -> AsyncIterator[None]:
        """Record a disconnect if the client leaves before the response inside is finished."""
        transport = request.transport
        self.open_streams += 1
        try:
            if transport is not None:
                self._stream_transports.add(transport)
            yield
        except _ServerCut:
            pass
        except asyncio.CancelledError:
            # handler_cancellation: the connection was lost while the handler awaited something.
            if not self._stopping:
                self._record_disconnect(request, scenario)
            raise
        except ConnectionError:
            # A write hit a connection the client had already closed.
            if not self._stopping:
                self._record_disconnect(request, scenario)
        finally:
            self.open_streams -= 1
            if transport is not None:
                self._stream_transports.discard(transport)

    @staticmethod
    def _cut(request: web.Request) -> NoReturn:
        """Abort the TCP connection without finishing the body."""
        assert request.transport is not None
        request.transport.abort()
        raise _ServerCut

    @staticmethod
    async def _stall() -> None:
        """Send nothing more; the handler is cancelled when the client goes away."""
        await asyncio.Event().wait()

    # --- chat completions ---

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = request[_BODY]
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error((400, {"message": "'messages' is a required property", "type": "invalid_request_error"}))
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error((400, {"message": "you must provide a model parameter", "type": "invalid_request_error"}))
        if early := self._scenario_error(model):
            return early
        if body.get("stream") is True:
            include_usage = (body.get("stream_options") or {}).get("include_usage") is True
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
            )
            async with self._watching(request, model):
                await response.prepare(request)
                await self._write_stream(request, response, model, include_usage=include_usage)
                # The body is finished only once the terminating chunk went out.
                await response.write_eof()
            return response
        async with self._watching(request, model):
            return await self._whole_answer(request, model)
        return web.Response(status=499)  # the client left while a write was pending; nobody reads this

    @staticmethod
    def _scenario_error(model: str) -> web.Response | None:
        if model == MODEL_BAD_REQUEST:
            return _error(_BAD_REQUEST)
        if model == MODEL_MISSING:
            message = f"The model `{model}` does not exist or you do not have access to it."
            return _error(
                (404, {"message": message, "type": "invalid_request_error", "param": None, "code": "model_not_found"})
            )
        if model == MODEL_RATE_LIMITED:
            return _error(_RATE_LIMITED, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        if model == MODEL_SERVER_ERROR:
            return _error(_SERVER_ERROR)
        return None

    def _answer(self, model: str) -> str:
        return SPLIT_UTF8_ANSWER if model == MODEL_SPLIT_UTF8 else self.answer

    async def _write_stream(
        self, request: web.Request, response: web.StreamResponse, model: str, *, include_usage: bool
    ) -> None:
        completion_id = request[_COMPLETION_ID]
        created = int(time.time())

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
        if model == MODEL_REASONING:
            for piece in REASONING_PIECES:
                await response.write(chunk({"content": None, "reasoning_content": piece}))
        pieces = split_answer(self._answer(model))
        for index, piece in enumerate(pieces[:2]):
            await self._write_delta(response, model, chunk({"content": piece}), slow=index > 0)
        if model == MODEL_ERROR_IN_STREAM:
            await response.write(_data({"error": _STREAM_ERROR}))
            return
        if model == MODEL_CUT:
            self._cut(request)
        if model == MODEL_STALL:
            await self._stall()
        if model == MODEL_MALFORMED:
            await response.write(b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
        for piece in pieces[2:]:
            await self._write_delta(response, model, chunk({"content": piece}), slow=True)
        await response.write(chunk({}, "length" if model == MODEL_LENGTH else "stop"))
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
            await _write_split_utf8(response, payload)
        else:
            await response.write(payload)

    async def _whole_answer(self, request: web.Request, model: str) -> web.StreamResponse:
        """The ``"stream": false`` answer: one chat.completion object."""
        if model == MODEL_STALL:
            await self._stall()
        if model == MODEL_ERROR_IN_STREAM:
            # Some OpenAI-compatible gateways answer a failure with HTTP 200 and an error object.
            return web.json_response({"error": _STREAM_ERROR}, dumps=_dumps)
        if model == MODEL_MALFORMED:
            return web.Response(text='{"id": "chatcmpl-broken", "choices": [', content_type="application/json")
        message: dict[str, Any] = {"role": "assistant", "content": self._answer(model), "refusal": None}
        if model == MODEL_REASONING:
            message["reasoning_content"] = "".join(REASONING_PIECES)
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
                    "finish_reason": "length" if model == MODEL_LENGTH else "stop",
                }
            ],
            "usage": usage(),
        }
        if model == MODEL_CUT:
            # Headers and half the body, then the connection goes.
            raw = _dumps(completion).encode()
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(raw)
            await response.prepare(request)
            await response.write(raw[: len(raw) // 2])
            assert request.transport is not None
            request.transport.abort()
            return response
        return web.json_response(completion, dumps=_dumps)


async def _write_split_utf8(response: web.StreamResponse, payload: bytes) -> None:
    """Write an event in two network writes that split its first multi-byte UTF-8 character."""
    first_non_ascii = next((i for i, byte in enumerate(payload) if byte >= 0x80), None)
    if first_non_ascii is None:
        await response.write(payload)
        return
    await response.write(payload[: first_non_ascii + 1])
    await asyncio.sleep(SPLIT_WRITE_PAUSE)
    await response.write(payload[first_non_ascii + 1 :])
