"""OpenAI-compatible chat: ``POST {base_url}/chat/completions`` over one pooled aiohttp session.

Speaks the Chat Completions wire format that OpenAI and many others (DeepSeek, Qwen's
compatible mode, vLLM, ...) share. Streams are read with our own SSE reader and
end OK only after ``data: [DONE]``; DeepSeek-style ``reasoning_content`` becomes
reasoning, and streamed ``tool_calls`` pieces become whole calls (``ToolCallAssembler``).
Requests carry tools, a tool loop's history and images (content arrays); files are refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from providers.base import (
    ChatEvent,
    ChatFinished,
    ChatInput,
    ChatResult,
    ChatService,
    ContentPart,
    FilePart,
    FinishReason,
    ImagePart,
    Message,
    ParameterSpec,
    ReasoningDelta,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    Usage,
    json_type_name,
    reject_unknown_parameters,
)
from providers.errors import (
    InvalidRequest,
    ServiceNotReady,
    UpstreamAuthError,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    connection_failed,
    quote_input,
)
from providers.http import received_chunks, upstream_session, upstream_ssl_context
from providers.limits import DEFAULT_LIMITS
from providers.sse import ServerSentEvent, iter_sse

PROVIDER = "openai"
LOG_ID_HEADER = "x-request-id"


@dataclass(frozen=True, slots=True)
class _Parameter(ParameterSpec):
    """A key of ``parameters``: what ListServices shows, and, for integers, the bounds a request is held to."""

    minimum: int | None = None
    maximum: int | None = None


# The one declaration of what the service takes in ``parameters``: ListServices lists it and
# requests are checked against it, by each parameter's type (``_CHECKS``), so the two cannot drift.
_OPTIONS = (
    _Parameter("temperature", "number", "sampling temperature, passed to the upstream as is"),
    _Parameter("top_p", "number", "nucleus sampling, passed to the upstream as is"),
    _Parameter("presence_penalty", "number", "passed to the upstream as is"),
    _Parameter("frequency_penalty", "number", "passed to the upstream as is"),
    # max_tokens has no documented ceiling; OpenAI documents seed as a 64-bit integer.
    _Parameter("max_tokens", "integer", "the most tokens to generate", minimum=1, maximum=2**31 - 1),
    _Parameter("seed", "integer", "for repeatable sampling", minimum=-(2**63), maximum=2**63 - 1),
    _Parameter("stop", "string|array", "stop sequence(s)"),
    _Parameter("response_format", "object", 'e.g. {"type": "json_object"}'),
    _Parameter("parallel_tool_calls", "boolean", "whether the model may call several tools in one turn"),
)


def _parameters(default_model: str) -> tuple[_Parameter, ...]:
    """The parameters of a service whose default model is ``default_model`` ("" for none)."""
    model = f"the model (default {default_model})" if default_model else "the model"
    return (_Parameter("model", "string", model, required=not default_model), *_OPTIONS)


_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,  # the deprecated single-function form
}

# An error object inside a stream (or in a 200 body) has no HTTP status of its own;
# these codes and types stand for one. Anything else there counts as a 5xx.
_STATUS_BY_ERROR_CODE = {
    "invalid_api_key": 401,
    "authentication_error": 401,
    "permission_error": 403,
    "model_not_found": 404,
    "not_found_error": 404,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "insufficient_quota": 429,
    "context_length_exceeded": 400,
    "invalid_request_error": 400,
}

# Upstreams echo keys back in their messages (OpenAI: "Incorrect API key provided: sk-ab***cd").
_KEY_LIKE = re.compile(r"\bsk-[\w*.-]+")

# How long to keep reading after [DONE] for the body to end, so the connection goes
# back to the pool; past it the connection is dropped instead.
_DRAIN_SECONDS = 1.0


class OpenAIChatService(ChatService):
    """A chat model behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    provider: ClassVar[str] = PROVIDER

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str | None,
        default_model: str = "",
        connect_timeout_seconds: float = DEFAULT_LIMITS.connect_timeout_seconds,
        read_timeout_seconds: float = DEFAULT_LIMITS.idle_timeout_seconds,
        description: str = "",
        missing_key_reason: str = "no API key is configured",
    ) -> None:
        parameters = _parameters(default_model)
        super().__init__(
            name,
            description
            or "OpenAI-compatible chat completions. Roles: system, user, assistant, tool. Takes tools, "
            "and images (by URL or bytes) in a user message's parts.",
            parameters,
        )
        self._parameters = parameters
        self._parameter_names = frozenset(parameter.name for parameter in self._parameters)
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._api_key = api_key or ""
        # The wiring knows where the key comes from ("OPENAI_API_KEY is not set"); the provider does not.
        self._missing_key_reason = missing_key_reason
        self._headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        self._default_model = default_model
        self._connect_timeout_seconds = connect_timeout_seconds
        self._read_timeout_seconds = read_timeout_seconds
        # One session per service: its pool keeps TLS connections to the upstream warm. The session
        # is made on the first call, in the calls' event loop; its trust store now, at start-up.
        self._session: aiohttp.ClientSession | None = None
        self._ssl_context = upstream_ssl_context()

    def not_ready_reason(self) -> str:
        return "" if self._api_key else self._missing_key_reason

    def secrets(self) -> tuple[str, ...]:
        return (self._api_key,) if self._api_key else ()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()

    def check_input(self, request: ChatInput) -> None:
        """Refuse what the Chat Completions API cannot take: files, provider file ids, misplaced images."""
        if request.tool_choice and not request.tools:
            raise InvalidRequest("tool_choice", "needs tools: the upstream takes a tool_choice only with tools")
        for index, message in enumerate(request.messages):
            for call_index, call in enumerate(message.tool_calls):
                if call.type != "function":
                    raise InvalidRequest(
                        f"messages[{index}].tool_calls[{call_index}].type",
                        f"must be 'function' for service {self.name!r} (got {quote_input(call.type)})",
                    )
            for part_index, part in enumerate(message.parts):
                _check_part(part, message.role, f"messages[{index}].parts[{part_index}]", self.name)

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the event loop that runs the calls.
        if self._session is None:
            self._session = upstream_session(
                base_url=self._url,
                connect_timeout_seconds=self._connect_timeout_seconds,
                read_timeout_seconds=self._read_timeout_seconds,
                ssl_context=self._ssl_context,
            )
        return self._session

    def _post(self, body: dict[str, Any]) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        # No redirects, as before on httpx: aiohttp would follow one and resend the request,
        # key included, wherever it points; a redirect means base_url needs fixing.
        return self._client().post(
            self._url, data=json.dumps(body).encode(), headers=self._headers, allow_redirects=False
        )

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        body = self._request_body(request, stream=True)
        exchange = _Exchange()
        with _map_transport_errors(exchange):
            # Leaving this block, however the call ends (the caller cancelled, a timeout, an
            # error), releases the response: an unfinished one drops its connection.
            async with self._post(body) as response:
                exchange.headers = response.headers
                await self._raise_for_status(response, exchange)
                await self._raise_for_json_instead_of_stream(response, exchange)
                finish_reason: FinishReason | None = None
                usage: Usage | None = None
                chat_id = ""
                # Made when the first tool call arrives: a text answer pays nothing for it.
                tool_calls: ToolCallAssembler | None = None
                async with contextlib.aclosing(iter_sse(received_chunks(response.content))) as events:
                    async for sse in events:
                        data = sse.data
                        if data == "[DONE]":
                            if finish_reason is None:
                                raise self._broken(exchange, "the stream ended with [DONE] but no finish_reason")
                            finish_reason, calls = _with_tool_calls(
                                finish_reason, tool_calls.calls() if tool_calls is not None else ()
                            )
                            yield ChatFinished(
                                finish_reason=finish_reason, usage=usage, chat_id=chat_id, tool_calls=calls
                            )
                            await _drain(events)
                            return
                        if not data:
                            continue  # an event with no data (a keep-alive of some servers)
                        chunk = self._chunk(data, exchange)
                        if not chat_id:
                            chat_id = str(chunk.get("id") or "")
                        choices = chunk.get("choices")
                        choice = choices[0] if choices and isinstance(choices, list) else None
                        if isinstance(choice, dict):
                            delta = choice.get("delta")
                            if isinstance(delta, dict):
                                # Reasoning (DeepSeek and others) comes before the answer it leads to.
                                reasoning = delta.get("reasoning_content")
                                if reasoning and isinstance(reasoning, str):
                                    yield ReasoningDelta(reasoning)
                                content = delta.get("content")
                                if content and isinstance(content, str):
                                    yield TextDelta(content)
                                tool_call_deltas = delta.get("tool_calls")
                                if tool_call_deltas:
                                    if tool_calls is None:
                                        tool_calls = ToolCallAssembler()
                                    tool_calls.add(tool_call_deltas)
                            reason = choice.get("finish_reason")
                            if reason and isinstance(reason, str):
                                finish_reason = _FINISH_REASONS.get(reason, FinishReason.UNSPECIFIED)
                        elif "error" in chunk:
                            raise self._error(None, chunk["error"], exchange, "the upstream failed mid-stream")
                        # Usage comes in the final choices-less chunk (include_usage); some servers
                        # put it on other chunks too, so the last one seen wins.
                        if chunk.get("usage"):
                            usage = _usage(chunk["usage"])
                raise self._broken(exchange, "the stream ended before data: [DONE]")

    async def chat(self, request: ChatInput) -> ChatResult:
        """Answer a whole turn with one non-streaming request."""
        body = self._request_body(request, stream=False)
        exchange = _Exchange()
        with _map_transport_errors(exchange):
            async with self._post(body) as response:
                exchange.headers = response.headers
                await self._raise_for_status(response, exchange)
                raw = await response.read()
        payload = _json_object(raw)
        choices = payload.get("choices") if payload is not None else None
        if payload is not None and not choices and "error" in payload:
            raise self._error(None, payload["error"], exchange, "the upstream failed")
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        if payload is None or choice is None or not isinstance(message, dict):
            raise self._broken(exchange, "the upstream answered with a malformed chat.completion")
        reason = choice.get("finish_reason")
        # The whole body arrived, so a missing finish_reason is unknown, not a cut.
        finish_reason, tool_calls = _with_tool_calls(
            _FINISH_REASONS.get(reason, FinishReason.UNSPECIFIED)
            if isinstance(reason, str)
            else FinishReason.UNSPECIFIED,
            whole_tool_calls(message.get("tool_calls")),
        )
        return ChatResult(
            content=_text(message.get("content")),
            reasoning=_text(message.get("reasoning_content")),
            finish_reason=finish_reason,
            usage=_usage(payload.get("usage")),
            chat_id=str(payload.get("id") or ""),
            tool_calls=tool_calls,
        )

    # --- requests ---------------------------------------------------------------------------------

    def _request_body(self, request: ChatInput, *, stream: bool) -> dict[str, Any]:
        """Validate the call and build the JSON body; raises before any network I/O."""
        if not self._api_key:
            raise ServiceNotReady(f"service {self.name!r} is not ready: {self._missing_key_reason}")
        # The servicer checked already; checked again so that the provider is safe called alone.
        self.check_input(request)
        reject_unknown_parameters(request.parameters, self._parameter_names)
        options = _checked_options(request.parameters, self._parameters)
        model = options.pop("model", self._default_model)
        if not model:
            raise InvalidRequest("parameters.model", f"is required (service {self.name!r} has no default model)")
        body: dict[str, Any] = {"model": model, "messages": [_wire_message(message) for message in request.messages]}
        if request.tools:
            body["tools"] = [_wire_tool(tool) for tool in request.tools]
        if request.tool_choice:
            body["tool_choice"] = _wire_tool_choice(request.tool_choice)
        body.update(options)
        body["stream"] = stream
        if stream:
            # Without this the stream carries no usage at all.
            body["stream_options"] = {"include_usage": True}
        return body

    # --- responses --------------------------------------------------------------------------------

    async def _raise_for_status(self, response: aiohttp.ClientResponse, exchange: _Exchange) -> None:
        """Raise the typed error for an HTTP error status, from the OpenAI error body when there is one."""
        if response.status < 400:
            return
        payload = _json_object(await response.read())
        error = payload.get("error") if payload is not None else None
        # An error status instead of an answer: the upstream did no work for the request.
        raise self._error(
            response.status, error, exchange, f"the upstream answered HTTP {response.status}", unprocessed=True
        )

    async def _raise_for_json_instead_of_stream(self, response: aiohttp.ClientResponse, exchange: _Exchange) -> None:
        """Some servers answer a failed stream request with a JSON error body and HTTP 200."""
        if not response.headers.get("content-type", "").startswith("application/json"):
            return
        payload = _json_object(await response.read())
        if payload is not None and "error" in payload:
            # An error body where the stream was due: the upstream did not start.
            raise self._error(None, payload["error"], exchange, "the upstream failed", unprocessed=True)
        raise self._broken(exchange, "the upstream answered with JSON instead of an event stream")

    def _chunk(self, data: str, exchange: _Exchange) -> dict[str, Any]:
        """One stream chunk as a JSON object; anything else is a broken stream."""
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            raise self._broken(exchange, "the upstream sent a malformed stream event (not a JSON object)")
        return chunk

    def _broken(self, exchange: _Exchange, what: str) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"service {self.name!r}: {what}", provider=PROVIDER, log_id=exchange.log_id())

    def _error(
        self, status: int | None, error: object, exchange: _Exchange, fallback: str, *, unprocessed: bool = False
    ) -> UpstreamError:
        return openai_error(
            status,
            error,
            service=self.name,
            fallback_message=fallback,
            log_id=exchange.log_id(),
            retry_after_seconds=_retry_after(exchange.headers),
            secret=self._api_key,
            unprocessed=unprocessed,
        )


class _Exchange:
    """The upstream response's headers once they arrived, for log ids and Retry-After in errors."""

    __slots__ = ("headers",)

    def __init__(self) -> None:
        self.headers: Mapping[str, str] = {}

    def log_id(self) -> str:
        return self.headers.get(LOG_ID_HEADER, "")


# --- parameters -------------------------------------------------------------------------------


def _checked_options(parameters: Mapping[str, Any], declared: tuple[_Parameter, ...]) -> dict[str, Any]:
    """The declared parameters the caller set, each checked against its type (and bounds), in their JSON types."""
    options: dict[str, Any] = {}
    for parameter in declared:
        value = parameters.get(parameter.name)
        if value is not None:
            _CHECKS[parameter.type](parameter, value)
            options[parameter.name] = value
    return options


def _check_string(parameter: _Parameter, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(f"parameters.{parameter.name}", f"must be a string, got {json_type_name(value)}")


def _check_number(parameter: _Parameter, value: object) -> None:
    # Struct numbers arrive as int when integral, float otherwise; bool is not a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"parameters.{parameter.name}", f"must be a number, got {json_type_name(value)}")


def _check_integer(parameter: _Parameter, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"parameters.{parameter.name}", f"must be an integer, got {json_type_name(value)}")
    minimum, maximum = parameter.minimum, parameter.maximum
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise InvalidRequest(f"parameters.{parameter.name}", f"must be between {minimum} and {maximum}, got {value}")


def _check_boolean(parameter: _Parameter, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"parameters.{parameter.name}", f"must be true or false, got {json_type_name(value)}")


def _check_strings(parameter: _Parameter, value: object) -> None:
    if not isinstance(value, str | list):
        raise InvalidRequest(
            f"parameters.{parameter.name}", f"must be a string or a list of strings, got {json_type_name(value)}"
        )
    for index, item in enumerate(value if isinstance(value, list) else ()):
        if not isinstance(item, str):
            raise InvalidRequest(
                f"parameters.{parameter.name}[{index}]", f"must be a string, got {json_type_name(item)}"
            )


def _check_object(parameter: _Parameter, value: object) -> None:
    if not isinstance(value, dict):
        raise InvalidRequest(f"parameters.{parameter.name}", f"must be an object, got {json_type_name(value)}")


# How a parameter of each declared type is checked.
_CHECKS: dict[str, Callable[[_Parameter, object], None]] = {
    "string": _check_string,
    "number": _check_number,
    "integer": _check_integer,
    "boolean": _check_boolean,
    "string|array": _check_strings,
    "object": _check_object,
}


# --- messages and tools on the wire -----------------------------------------------------------


def _check_part(part: ContentPart, role: str, field: str, service: str) -> None:
    """Refuse a part the Chat Completions API cannot take here, naming it."""
    if isinstance(part, FilePart):
        raise InvalidRequest(
            field, f"service {service!r} takes text and images in parts, not files: send a file's text as a text part"
        )
    if isinstance(part, ImagePart):
        if part.file_id:
            raise InvalidRequest(
                f"{field}.image.file_id",
                f"service {service!r} takes an image by url or data, not by a provider file id",
            )
        if role != "user":
            raise InvalidRequest(field, f"only a user message carries images (this one is {quote_input(role)})")


def _wire_message(message: Message) -> dict[str, Any]:
    """One message in the Chat Completions shape."""
    if not (message.parts or message.tool_calls or message.tool_call_id):
        return {"role": message.role, "content": message.content}  # text: the common case, built at once
    content: str | list[dict[str, Any]] | None = (
        [_wire_part(part) for part in message.parts] if message.parts else message.content
    )
    wire: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        # An assistant turn that only called tools has no text: OpenAI wants null there.
        wire["content"] = content or None
        wire["tool_calls"] = [
            {"id": call.id, "type": call.type, "function": {"name": call.function_name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
    if message.tool_call_id:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def _wire_part(part: ContentPart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    assert isinstance(part, ImagePart) and not part.file_id, "check_input lets no other part through"
    url = part.url or f"data:{part.mime_type};base64,{base64.b64encode(part.data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def _wire_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    # No parameters means a function without arguments; some servers refuse an empty schema.
    if tool.parameters:
        function["parameters"] = dict(tool.parameters)
    return {"type": "function", "function": function}


def _wire_tool_choice(choice: str) -> str | dict[str, Any]:
    """The wire form of ``tool_choice``: a mode as it is, a tool's name as the object that forces that tool."""
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


# --- tool calls in answers --------------------------------------------------------------------


class ToolCallAssembler:
    """Whole tool calls from a stream's ``delta.tool_calls`` pieces; pure, fed parsed JSON.

    Each call arrives as pieces keyed by ``index``: the first carries ``id``, ``type`` and
    ``function.name``, later ones only ``index`` and a piece of ``function.arguments``.
    Several calls may interleave, and one delta may carry pieces of several.
    """

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def add(self, deltas: object) -> None:
        """Take one delta's ``tool_calls`` list; what is not a call piece is ignored."""
        if not isinstance(deltas, list):
            return
        for delta in deltas:
            if isinstance(delta, dict):
                self._call_for(delta).add(delta)

    def calls(self) -> tuple[ToolCall, ...]:
        """The calls so far, in index order."""
        return tuple(self._calls[index].whole(index) for index in sorted(self._calls))

    def _call_for(self, delta: dict[str, Any]) -> _PartialCall:
        index = delta.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = self._index_without_one(delta.get("id"))
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = _PartialCall()
        return call

    def _index_without_one(self, call_id: object) -> int:
        # Some servers leave out the index: a piece with a new id starts a call, one with a known id
        # goes on that call, and one without an id goes on the last call.
        for index, call in self._calls.items():
            if call_id and call.id == call_id:
                return index
        if call_id or not self._calls:
            return max(self._calls, default=-1) + 1
        return max(self._calls)


class _PartialCall:
    """One tool call as its pieces arrive."""

    __slots__ = ("arguments", "id", "name", "type")

    def __init__(self) -> None:
        self.id = ""
        self.type = ""
        self.name = ""
        self.arguments: list[str] = []

    def add(self, delta: dict[str, Any]) -> None:
        # id, type and name come once; a server that repeats them on every piece repeats the same value.
        self.id = self.id or _text(delta.get("id"))
        self.type = self.type or _text(delta.get("type"))
        function = delta.get("function")
        if isinstance(function, dict):
            self.name = self.name or _text(function.get("name"))
            arguments = function.get("arguments")
            if arguments:
                self.arguments.append(_arguments_text(arguments))

    def whole(self, index: int) -> ToolCall:
        # Without an id the caller could not answer the call; any id works for a stateless chat API,
        # which only matches each tool message to an assistant tool call of the same history.
        return ToolCall(
            id=self.id or f"call_{index}",
            type=self.type or "function",
            function_name=self.name,
            arguments="".join(self.arguments),
        )


def whole_tool_calls(calls: object) -> tuple[ToolCall, ...]:
    """The ``message.tool_calls`` of a whole (non-streamed) answer."""
    if not isinstance(calls, list):
        return ()
    assembler = ToolCallAssembler()
    assembler.add([{**call, "index": index} for index, call in enumerate(calls) if isinstance(call, dict)])
    return assembler.calls()


def _arguments_text(arguments: object) -> str:
    # Arguments are JSON text; a few servers send the object itself.
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _with_tool_calls(
    finish_reason: FinishReason, calls: tuple[ToolCall, ...]
) -> tuple[FinishReason, tuple[ToolCall, ...]]:
    """The finish reason and tool calls of a turn: calls go with TOOL_CALLS only, as the API promises.

    Some servers (Ollama, older vLLM) end a turn that called tools with "stop": the calls are what
    the caller has to act on, so it ends as TOOL_CALLS. A turn cut by "length" or a filter keeps
    its reason, and its calls, whose arguments may be cut short, are dropped.
    """
    if not calls:
        return finish_reason, ()
    if finish_reason in (FinishReason.TOOL_CALLS, FinishReason.STOP, FinishReason.UNSPECIFIED):
        return FinishReason.TOOL_CALLS, calls
    return finish_reason, ()


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _usage(usage: object) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    counts = [usage.get(key) for key in ("prompt_tokens", "completion_tokens", "total_tokens")]
    prompt, completion, total = (count if isinstance(count, int) else 0 for count in counts)
    return Usage(input_tokens=prompt, output_tokens=completion, total_tokens=total or prompt + completion)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds; HTTP dates are ignored)."""
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(header)
        if value:
            with contextlib.suppress(ValueError):
                seconds = float(value) * scale
                if seconds >= 0:
                    return seconds
    return None


async def _drain(events: AsyncIterator[ServerSentEvent]) -> None:
    """Read to the end of the body so the connection can be reused."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in events:
                pass


# --- errors -----------------------------------------------------------------------------------


def openai_error(
    status: int | None,
    error: object,
    *,
    service: str,
    fallback_message: str,
    log_id: str = "",
    retry_after_seconds: float | None = None,
    secret: str = "",
    unprocessed: bool = False,
) -> UpstreamError:
    """The typed error for an HTTP status and/or an OpenAI error object ``{"message", "type", "code"}``.

    ``status`` is None for an error object that arrived without one (inside a stream);
    its code or type then stands for a status, and anything unrecognised counts as a 5xx.
    """
    details: Mapping[str, Any] = error if isinstance(error, dict) else {}
    code = str(details.get("code") or "")
    kind = str(details.get("type") or "")
    text = _redact(str(details.get("message") or "") or (error if isinstance(error, str) else ""), secret)
    message = f"service {service!r}: {fallback_message}" + (f": {text}" if text else "")
    if status is None:
        status = _status_of_error_object(code, kind)
    facts: dict[str, Any] = {
        "provider": PROVIDER,
        "upstream_code": code or kind or (str(status) if status else ""),
        "log_id": log_id,
        "unprocessed": unprocessed,
    }
    if status in (401, 403):
        return UpstreamAuthError(f"{message}. Check the API key of service {service!r}", **facts)
    if status == 404:
        return UpstreamNotFound(message, **facts)
    if status in (400, 422):
        return UpstreamInvalidRequest(message, **facts)
    if status == 429:
        return UpstreamRateLimited(message, retry_after_seconds=retry_after_seconds, **facts)
    if status is None or status >= 500:
        return UpstreamUnavailable(message, **facts)
    if status >= 400:
        return UpstreamRejected(message, **facts)
    return UpstreamError(message, **facts)


def _status_of_error_object(code: str, kind: str) -> int | None:
    # Some servers (vLLM, OpenRouter) put the HTTP status itself in `code`.
    if code.isdigit() and 400 <= int(code) < 600:
        return int(code)
    return _STATUS_BY_ERROR_CODE.get(code) or _STATUS_BY_ERROR_CODE.get(kind)


def _redact(text: str, secret: str) -> str:
    if secret:
        text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("sk-[redacted]", text)


@contextlib.contextmanager
def _map_transport_errors(exchange: _Exchange) -> Iterator[None]:
    """Translate aiohttp's exceptions into the gateway's error tree."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as error:
        raise connection_failed(PROVIDER, "the upstream", error, timed_out=True) from error
    except TimeoutError as error:
        # aiohttp's read timeout (SocketTimeoutError) is a TimeoutError.
        raise UpstreamTimeout(
            f"the upstream did not answer in time ({type(error).__name__})",
            provider=PROVIDER,
            log_id=exchange.log_id(),
        ) from error
    except aiohttp.ClientConnectorError as error:
        # Refused, unresolvable, TLS handshake failed: the request never reached the upstream.
        raise connection_failed(PROVIDER, "the upstream", error, timed_out=False) from error
    except aiohttp.ClientError as error:
        # Reset, hung up, or a body cut short (ClientPayloadError): the upstream had the request.
        raise UpstreamUnavailable(
            f"the upstream broke the connection ({type(error).__name__})",
            provider=PROVIDER,
            log_id=exchange.log_id(),
        ) from error
