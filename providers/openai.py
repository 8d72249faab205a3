"""OpenAI-compatible chat: ``POST {base_url}/chat/completions`` over one pooled aiohttp session.

Speaks the Chat Completions wire format that OpenAI and many others (DeepSeek, Qwen's
compatible mode, vLLM, ...) share. Streams are read with our own SSE reader and
end OK only after ``data: [DONE]``; DeepSeek-style ``reasoning_content`` becomes
reasoning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

import aiohttp

from providers.base import (
    ChatEvent,
    ChatFinished,
    ChatInput,
    ChatResult,
    ChatService,
    FinishReason,
    ParameterSpec,
    ReasoningDelta,
    TextDelta,
    Usage,
    int_parameter,
    json_type_name,
    reject_unknown_parameters,
    string_parameter,
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
)
from providers.http import received_chunks, upstream_session
from providers.limits import DEFAULT_LIMITS
from providers.sse import ServerSentEvent, iter_sse

PROVIDER = "openai"
LOG_ID_HEADER = "x-request-id"

_NUMBER_PARAMETERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
# OpenAI documents seed as a 64-bit integer; max_tokens has no documented ceiling.
_INTEGER_PARAMETERS = {"max_tokens": (1, 2**31 - 1), "seed": (-(2**63), 2**63 - 1)}
_CHAT_PARAMETERS = frozenset({"model", "stop", "response_format", *_NUMBER_PARAMETERS, *_INTEGER_PARAMETERS})


def _parameter_specs(default_model: str) -> tuple[ParameterSpec, ...]:
    """What ListServices shows; the same keys as _CHAT_PARAMETERS."""
    model = f"the model (default {default_model})" if default_model else "the model"
    return (
        ParameterSpec("model", "string", model, required=not default_model),
        *(ParameterSpec(name, "number", "passed to the upstream as is") for name in _NUMBER_PARAMETERS),
        *(ParameterSpec(name, "integer", "passed to the upstream as is") for name in _INTEGER_PARAMETERS),
        ParameterSpec("stop", "string|array", "stop sequence(s)"),
        ParameterSpec("response_format", "object", 'e.g. {"type": "json_object"}'),
    )


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
        super().__init__(
            name,
            description or "OpenAI-compatible chat completions. Roles: system, user, assistant.",
            _parameter_specs(default_model),
        )
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._api_key = api_key or ""
        # The wiring knows where the key comes from ("OPENAI_API_KEY is not set"); the provider does not.
        self._missing_key_reason = missing_key_reason
        self._headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        self._default_model = default_model
        self._connect_timeout_seconds = connect_timeout_seconds
        self._read_timeout_seconds = read_timeout_seconds
        # One session per service: its pool keeps TLS connections to the upstream warm.
        self._session: aiohttp.ClientSession | None = None

    def not_ready_reason(self) -> str:
        return "" if self._api_key else self._missing_key_reason

    def secrets(self) -> tuple[str, ...]:
        return (self._api_key,) if self._api_key else ()

    async def aclose(self) -> None:
        """Close the pooled connections."""
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the event loop that runs the calls.
        if self._session is None:
            self._session = upstream_session(
                base_url=self._url,
                connect_timeout_seconds=self._connect_timeout_seconds,
                read_timeout_seconds=self._read_timeout_seconds,
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
                async with contextlib.aclosing(iter_sse(received_chunks(response.content))) as events:
                    async for sse in events:
                        data = sse.data
                        if data == "[DONE]":
                            if finish_reason is None:
                                raise self._broken(exchange, "the stream ended with [DONE] but no finish_reason")
                            yield ChatFinished(finish_reason=finish_reason, usage=usage, chat_id=chat_id)
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
        return ChatResult(
            content=_text(message.get("content")),
            reasoning=_text(message.get("reasoning_content")),
            # The whole body arrived, so a missing finish_reason is unknown, not a cut.
            finish_reason=_FINISH_REASONS.get(reason, FinishReason.UNSPECIFIED)
            if isinstance(reason, str)
            else FinishReason.UNSPECIFIED,
            usage=_usage(payload.get("usage")),
            chat_id=str(payload.get("id") or ""),
        )

    # --- requests ---------------------------------------------------------------------------------

    def _request_body(self, request: ChatInput, *, stream: bool) -> dict[str, Any]:
        """Validate the call and build the JSON body; raises before any network I/O."""
        if not self._api_key:
            raise ServiceNotReady(f"service {self.name!r} is not ready: {self._missing_key_reason}")
        parameters = request.parameters
        reject_unknown_parameters(parameters, _CHAT_PARAMETERS)
        model = string_parameter(parameters, "model", self._default_model)
        if not model:
            raise InvalidRequest("parameters.model", f"is required (service {self.name!r} has no default model)")
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": message.role, "content": message.content} for message in request.messages],
        }
        body.update(_options(parameters))
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


def _options(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling options the caller set, type-checked, in their JSON types."""
    options: dict[str, Any] = {}
    for key in _NUMBER_PARAMETERS:
        value = parameters.get(key)
        if value is not None:
            # Struct numbers arrive as int when integral, float otherwise; bool is not a number.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequest(f"parameters.{key}", f"must be a number, got {json_type_name(value)}")
            options[key] = value
    for key, (minimum, maximum) in _INTEGER_PARAMETERS.items():
        if parameters.get(key) is not None:
            options[key] = int_parameter(parameters, key, 0, minimum=minimum, maximum=maximum)
    stop = parameters.get("stop")
    if stop is not None:
        if not isinstance(stop, str | list):
            raise InvalidRequest(
                "parameters.stop", f"must be a string or a list of strings, got {json_type_name(stop)}"
            )
        for index, item in enumerate(stop if isinstance(stop, list) else ()):
            if not isinstance(item, str):
                raise InvalidRequest(f"parameters.stop[{index}]", f"must be a string, got {json_type_name(item)}")
        options["stop"] = stop
    response_format = parameters.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise InvalidRequest(
                "parameters.response_format", f"must be an object, got {json_type_name(response_format)}"
            )
        options["response_format"] = response_format
    return options


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
