"""The OpenAI-compatible chat service end to end (gRPC in, a fake upstream on 127.0.0.1), and its provider alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.base import ChatInput, FinishReason, Message, TextDelta
from providers.errors import (
    InvalidRequest,
    ServiceNotReady,
    UpstreamAuthError,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.openai import OpenAIChatService
from tests.conftest import error_details
from tests.fakes import openai as fake
from tests.fakes._server import closed_port, http_server, misbehaving_server
from tests.fakes.openai import FakeOpenAI
from tests.fakes.upstreams import collect
from tests.harness import gateway_for

HI = [pb.ChatMessage(role="user", content="hi")]
COMPLETIONS_PATH = "/v1/chat/completions"


def _service(upstream: FakeOpenAI, **options: Any) -> OpenAIChatService:
    options.setdefault("api_key", upstream.api_key)
    options.setdefault("default_model", fake.MODEL_NORMAL)
    return OpenAIChatService("openai", base_url=upstream.base_url, **options)


@pytest.fixture
async def stub(fake_openai: FakeOpenAI) -> AsyncIterator[pb_grpc.AIPlatformServiceStub]:
    """A stub to a gateway whose `openai` service talks to the fake (default model gpt-fake)."""
    async with gateway_for(services=[_service(fake_openai)]) as gateway:
        yield gateway.stub


def _parameters(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _stream_request(model: str | None = None, **fields: Any) -> pb.StreamChatRequest:
    fields.setdefault("messages", HI)
    parameters = _parameters(model=model) if model else _parameters()
    return pb.StreamChatRequest(service_name="openai", parameters=parameters, **fields)


def _chat_request(model: str | None = None, **fields: Any) -> pb.ChatRequest:
    fields.setdefault("messages", HI)
    parameters = _parameters(model=model) if model else _parameters()
    return pb.ChatRequest(service_name="openai", parameters=parameters, **fields)


async def _unary_error(call: Any) -> grpc.aio.AioRpcError | None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


def _first_pieces(count: int, answer: str = fake.DEFAULT_ANSWER) -> list[str]:
    return fake.split_answer(answer)[:count]


def _trailing_bytes(error: grpc.aio.AioRpcError) -> bytes:
    return b"".join(
        value if isinstance(value, bytes) else value.encode() for _, value in error.trailing_metadata() or ()
    )


# --- the normal answer ------------------------------------------------------------------------


async def test_stream_chat_relays_each_delta_and_ends_with_usage(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request()))

    assert error is None
    deltas = [response.delta for response in responses[:-1]]
    assert deltas == fake.split_answer(fake.DEFAULT_ANSWER), "each upstream delta is relayed as it came"
    final = responses[-1]
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (
        fake.PROMPT_TOKENS,
        fake.COMPLETION_TOKENS,
        fake.TOTAL_TOKENS,
    )
    (sent,) = fake_openai.requests
    assert final.chat_id == sent.completion_id


async def test_stream_request_carries_key_model_messages_and_include_usage(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    messages = [
        pb.ChatMessage(role="system", content="You are terse."),
        pb.ChatMessage(role="user", content="第一问"),
        pb.ChatMessage(role="assistant", content="第一答"),
        pb.ChatMessage(role="user", content="第二问"),
    ]
    _, error = await collect(stub.StreamChat(_stream_request(messages=messages)))

    assert error is None
    (sent,) = fake_openai.requests
    assert (sent.method, sent.path) == ("POST", COMPLETIONS_PATH)
    assert sent.headers["authorization"] == f"Bearer {fake_openai.api_key}"
    assert sent.json == {
        "model": fake.MODEL_NORMAL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "第一问"},
            {"role": "assistant", "content": "第一答"},
            {"role": "user", "content": "第二问"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_chat_is_one_non_streaming_request(stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI) -> None:
    response = await stub.Chat(_chat_request())

    assert response.content == fake.DEFAULT_ANSWER
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (
        fake.PROMPT_TOKENS,
        fake.COMPLETION_TOKENS,
        fake.TOTAL_TOKENS,
    )
    (sent,) = fake_openai.requests
    assert response.chat_id == sent.completion_id
    assert sent.json["stream"] is False
    assert "stream_options" not in sent.json


async def test_reasoning_goes_to_reasoning_delta(stub: pb_grpc.AIPlatformServiceStub) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request(fake.MODEL_REASONING)))
    assert error is None
    reasoning = [response.reasoning_delta for response in responses if response.reasoning_delta]
    assert reasoning == list(fake.REASONING_PIECES)
    assert "".join(response.delta for response in responses) == fake.DEFAULT_ANSWER
    first_text = next(index for index, response in enumerate(responses) if response.delta)
    assert all(response.reasoning_delta for response in responses[:first_text]), "reasoning comes first"

    whole = await stub.Chat(_chat_request(fake.MODEL_REASONING))
    assert (whole.reasoning, whole.content) == ("".join(fake.REASONING_PIECES), fake.DEFAULT_ANSWER)


async def test_options_are_forwarded_in_their_json_types(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    request = _stream_request()
    request.parameters.update(
        {
            "max_tokens": 256,
            "seed": 7,
            "temperature": 0.2,
            "top_p": 1,
            "presence_penalty": -0.5,
            "frequency_penalty": 0.25,
            "stop": ["\n\n", "END"],
            "response_format": {"type": "json_object"},
        }
    )
    _, error = await collect(stub.StreamChat(request))

    assert error is None
    sent = fake_openai.requests[-1].json
    # The fake parsed the raw JSON: an int here means the wire said 256, not 256.0.
    assert type(sent["max_tokens"]) is int and sent["max_tokens"] == 256
    assert type(sent["seed"]) is int and sent["seed"] == 7
    assert type(sent["temperature"]) is float and sent["temperature"] == 0.2
    assert sent["top_p"] == 1
    assert (sent["presence_penalty"], sent["frequency_penalty"]) == (-0.5, 0.25)
    assert sent["stop"] == ["\n\n", "END"]
    assert sent["response_format"] == {"type": "json_object"}


async def test_unknown_option_is_rejected_naming_the_key(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    request = _stream_request()
    request.parameters.update({"top_k": 40})
    _, error = await collect(stub.StreamChat(request))

    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameters.top_k" in (error.details() or "")
    violation = error_details(error)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == "parameters.top_k"
    assert fake_openai.requests == [], "nothing reaches the upstream"


# A value of each type ListServices names, and one of another type.
_RIGHT_VALUE: dict[str, Any] = {
    "string": "gpt-other",
    "number": 0.5,
    "integer": 7,
    "boolean": True,
    "string|array": ["END"],
    "object": {"type": "json_object"},
}
_WRONG_VALUE: dict[str, Any] = {
    "string": 4,
    "number": "hot",
    "integer": 2.5,
    "boolean": "yes",
    "string|array": 3,
    "object": "json",
}


async def test_list_services_shows_the_parameters_requests_are_checked_against(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    (info,) = (await stub.ListServices(pb.ListServicesRequest())).services
    listed = {parameter.name: parameter.type for parameter in info.parameters}
    assert listed == {
        "model": "string",
        "temperature": "number",
        "top_p": "number",
        "presence_penalty": "number",
        "frequency_penalty": "number",
        "max_tokens": "integer",
        "seed": "integer",
        "stop": "string|array",
        "response_format": "object",
        "parallel_tool_calls": "boolean",
    }
    for name, kind in listed.items():
        wrong = _stream_request()
        wrong.parameters.update({name: _WRONG_VALUE[kind]})
        _, error = await collect(stub.StreamChat(wrong))
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert error_details(error)["BadRequest"].field_violations[0].field == f"parameters.{name}"  # type: ignore[attr-defined]

        right = _stream_request()
        right.parameters.update({name: _RIGHT_VALUE[kind]})
        _, error = await collect(stub.StreamChat(right))
        assert error is None, name
        assert fake_openai.requests[-1].json[name] == _RIGHT_VALUE[kind]
    assert len(fake_openai.requests) == len(listed), "no wrong value reached the upstream"


async def test_model_parameter_overrides_the_default(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    await stub.Chat(_chat_request())
    await stub.Chat(_chat_request("gpt-other"))
    assert [request.json["model"] for request in fake_openai.requests] == [fake.MODEL_NORMAL, "gpt-other"]


async def test_length_limit_is_the_finish_reason(stub: pb_grpc.AIPlatformServiceStub) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request(fake.MODEL_LENGTH)))
    assert error is None
    assert responses[-1].finish_reason == pb.FINISH_REASON_LENGTH

    whole = await stub.Chat(_chat_request(fake.MODEL_LENGTH))
    assert whole.finish_reason == pb.FINISH_REASON_LENGTH


async def test_split_utf8_characters_arrive_whole(stub: pb_grpc.AIPlatformServiceStub) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request(fake.MODEL_SPLIT_UTF8)))
    assert error is None
    assert "".join(response.delta for response in responses) == fake.SPLIT_UTF8_ANSWER


async def test_calls_reuse_one_pooled_connection(stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI) -> None:
    for _ in range(2):
        _, error = await collect(stub.StreamChat(_stream_request()))
        assert error is None
    await stub.Chat(_chat_request())
    ports = {request.client_port for request in fake_openai.requests}
    assert len(ports) == 1, "a finished stream returns its connection to the pool"


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "code", "reason", "upstream_code"),
    [
        (fake.MODEL_BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST", "invalid_request_error"),
        (fake.MODEL_MISSING, grpc.StatusCode.NOT_FOUND, "UPSTREAM_NOT_FOUND", "model_not_found"),
        (fake.MODEL_RATE_LIMITED, grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", "rate_limit_exceeded"),
        (fake.MODEL_SERVER_ERROR, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "server_error"),
    ],
)
async def test_http_errors_map_to_statuses(
    stub: pb_grpc.AIPlatformServiceStub,
    fake_openai: FakeOpenAI,
    model: str,
    code: grpc.StatusCode,
    reason: str,
    upstream_code: str,
) -> None:
    responses, stream_error = await collect(stub.StreamChat(_stream_request(model)))
    assert responses == []
    stream_request_id = fake_openai.requests[-1].request_id
    unary_error = await _unary_error(stub.Chat(_chat_request(model)))
    unary_request_id = fake_openai.requests[-1].request_id

    for error, request_id in ((stream_error, stream_request_id), (unary_error, unary_request_id)):
        assert error is not None and error.code() == code
        assert f"logid={request_id}" in (error.details() or "")
        info = error_details(error)["ErrorInfo"]
        assert info.reason == reason  # type: ignore[attr-defined]
        assert dict(info.metadata) == {"provider": "openai", "upstream_code": upstream_code, "log_id": request_id}  # type: ignore[attr-defined]


async def test_rate_limit_carries_retry_info(stub: pb_grpc.AIPlatformServiceStub) -> None:
    _, error = await collect(stub.StreamChat(_stream_request(fake.MODEL_RATE_LIMITED)))
    assert error is not None
    assert error_details(error)["RetryInfo"].retry_delay.seconds == fake.RETRY_AFTER_SECONDS  # type: ignore[attr-defined]


async def test_missing_model_message_comes_from_the_upstream(stub: pb_grpc.AIPlatformServiceStub) -> None:
    _, error = await collect(stub.StreamChat(_stream_request(fake.MODEL_MISSING)))
    assert error is not None
    assert f"The model `{fake.MODEL_MISSING}` does not exist" in (error.details() or "")


@pytest.mark.parametrize(
    ("model", "pieces", "fragment"),
    [
        (fake.MODEL_CUT, 2, "broke the connection"),
        (fake.MODEL_NO_DONE, len(fake.split_answer(fake.DEFAULT_ANSWER)), "[DONE]"),
        (fake.MODEL_ERROR_IN_STREAM, 2, "overloaded"),
        (fake.MODEL_MALFORMED, 2, "malformed"),
    ],
)
async def test_unfinished_streams_deliver_their_chunks_then_fail(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI, model: str, pieces: int, fragment: str
) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request(model)))

    assert [response.delta for response in responses] == _first_pieces(pieces)
    assert all(response.finish_reason == pb.FINISH_REASON_UNSPECIFIED for response in responses)
    assert error is not None, "a stream the upstream did not finish must not end OK"
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert fragment in (error.details() or "")
    assert f"logid={fake_openai.requests[-1].request_id}" in (error.details() or "")


async def test_error_in_stream_keeps_the_upstream_type_as_code(stub: pb_grpc.AIPlatformServiceStub) -> None:
    _, error = await collect(stub.StreamChat(_stream_request(fake.MODEL_ERROR_IN_STREAM)))
    assert error is not None
    info = error_details(error)["ErrorInfo"]
    assert (info.reason, info.metadata["upstream_code"]) == ("UPSTREAM_UNAVAILABLE", "server_error")  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", [fake.MODEL_CUT, fake.MODEL_MALFORMED, fake.MODEL_ERROR_IN_STREAM])
async def test_broken_whole_answers_are_unavailable(stub: pb_grpc.AIPlatformServiceStub, model: str) -> None:
    error = await _unary_error(stub.Chat(_chat_request(model)))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE


async def test_wrong_key_is_the_gateways_configuration_and_never_leaks(fake_openai: FakeOpenAI) -> None:
    wrong_key = "sk-wrong-key-ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    async with gateway_for(services=[_service(fake_openai, api_key=wrong_key)]) as gateway:
        stub = gateway.stub
        _, stream_error = await collect(stub.StreamChat(_stream_request()))
        unary_error = await _unary_error(stub.Chat(_chat_request()))
    for error in (stream_error, unary_error):
        assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_details(error)["ErrorInfo"].reason == "UPSTREAM_AUTH_FAILED"  # type: ignore[attr-defined]
        assert "API key" in (error.details() or "")
        assert wrong_key not in (error.details() or "")
        assert wrong_key.encode() not in _trailing_bytes(error)


async def test_without_a_key_the_service_is_not_ready(fake_openai: FakeOpenAI) -> None:
    async with gateway_for(services=[_service(fake_openai, api_key=None)]) as gateway:
        stub = gateway.stub
        (info,) = (await stub.ListServices(pb.ListServicesRequest())).services
        _, error = await collect(stub.StreamChat(_stream_request()))
    assert (info.name, info.provider, info.ready) == ("openai", "openai", False)
    assert "no API key" in info.not_ready_reason
    assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(error)["ErrorInfo"].reason == "SERVICE_NOT_READY"  # type: ignore[attr-defined]
    assert fake_openai.requests == []


async def test_unreachable_upstream_is_unavailable(fake_openai: FakeOpenAI) -> None:
    service = _service(fake_openai)
    await fake_openai.stop()  # nothing listens on its port any more
    async with gateway_for(services=[service]) as gateway:
        stub = gateway.stub
        _, error = await collect(stub.StreamChat(_stream_request()))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE


# --- cancellation and deadlines ----------------------------------------------------------------


async def test_cancelled_stream_closes_the_upstream_connection(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    call = stub.StreamChat(_stream_request(fake.MODEL_STALL))
    received = [await call.read(), await call.read()]
    assert [response.delta for response in received] == _first_pieces(2)

    cancelled_at = time.monotonic()
    call.cancel()
    disconnect = await fake_openai.wait_for_disconnect(timeout=2.0)

    assert disconnect.scenario == fake.MODEL_STALL
    assert disconnect.time - cancelled_at < 1.0
    await _until(lambda: fake_openai.open_streams == 0)


@pytest.mark.parametrize("rpc", ["StreamChat", "Chat"])
async def test_deadline_bounds_a_stalled_upstream_and_closes_it(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI, rpc: str
) -> None:
    started = time.monotonic()
    if rpc == "StreamChat":
        _, error = await collect(stub.StreamChat(_stream_request(fake.MODEL_STALL), timeout=0.5))
    else:
        error = await _unary_error(stub.Chat(_chat_request(fake.MODEL_STALL), timeout=0.5))
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    disconnect = await fake_openai.wait_for_disconnect(timeout=2.0)
    assert disconnect.time - started < 1.5


# --- the provider alone -----------------------------------------------------------------------


def _input(**parameters: Any) -> ChatInput:
    return ChatInput(messages=(Message("user", "hi"),), parameters=parameters)


def _offline_service(**options: Any) -> OpenAIChatService:
    """A service whose upstream is never reached (validation fails first)."""
    options.setdefault("api_key", "sk-unused")
    return OpenAIChatService("openai", base_url="http://127.0.0.1:9/v1", **options)


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({}, "parameters.model"),  # no default model either
        ({"model": 4}, "parameters.model"),
        ({"model": "m", "temperature": "hot"}, "parameters.temperature"),
        ({"model": "m", "top_p": True}, "parameters.top_p"),
        ({"model": "m", "max_tokens": 2.5}, "parameters.max_tokens"),
        ({"model": "m", "max_tokens": 0}, "parameters.max_tokens"),
        ({"model": "m", "seed": "7"}, "parameters.seed"),
        ({"model": "m", "stop": ["ok", 3]}, "parameters.stop[1]"),
        ({"model": "m", "stop": 3}, "parameters.stop"),
        ({"model": "m", "response_format": "json"}, "parameters.response_format"),
        ({"model": "m", "n": 2}, "parameters.n"),
    ],
)
async def test_invalid_parameters_are_rejected_before_any_request(parameters: dict[str, Any], field: str) -> None:
    service = _offline_service()
    try:
        with pytest.raises(InvalidRequest) as caught:
            await service.chat(_input(**parameters))
        assert caught.value.field == field
        with pytest.raises(InvalidRequest):
            async for _ in service.stream_chat(_input(**parameters)):
                pass
    finally:
        await service.aclose()


async def test_without_a_key_calls_raise_not_ready() -> None:
    service = _offline_service(api_key="", default_model="m")
    try:
        assert service.not_ready_reason() == "no API key is configured"
        with pytest.raises(ServiceNotReady):
            await service.chat(_input())
    finally:
        await service.aclose()


async def test_the_wiring_can_name_the_missing_key_variable() -> None:
    service = _offline_service(api_key=None, default_model="m", missing_key_reason="DEEPSEEK_API_KEY is not set")
    try:
        assert service.not_ready_reason() == "DEEPSEEK_API_KEY is not set"
        with pytest.raises(ServiceNotReady, match="DEEPSEEK_API_KEY is not set"):
            async for _ in service.stream_chat(_input()):
                pass
    finally:
        await service.aclose()


def _sse(*events: object) -> bytes:
    return b"".join(f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode() for event in events)


@contextlib.asynccontextmanager
async def _answering(
    body: bytes, *, status: int = 200, content_type: str = "text/event-stream", **options: Any
) -> AsyncIterator[OpenAIChatService]:
    """A service whose upstream, a real HTTP server on 127.0.0.1, answers every request with ``body``."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type=content_type)

    options.setdefault("api_key", "sk-test")
    async with http_server({COMPLETIONS_PATH: handler}) as base:
        service = OpenAIChatService("openai", base_url=f"{base}/v1", default_model="m", **options)
        try:
            yield service
        finally:
            await service.aclose()


async def _stream_events(body: bytes, **options: Any) -> list[object]:
    async with _answering(body, **options) as service:
        return [event async for event in service.stream_chat(_input())]


def _chunk(**choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": None, **choice}]}


async def test_auth_errors_redact_keys_the_upstream_echoes() -> None:
    key = "sk-secret-0123456789abcdef"
    message = f"Incorrect API key provided: {key}. Masked: sk-secr***cdef."
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    with pytest.raises(UpstreamAuthError) as caught:
        await _stream_events(body, status=401, content_type="application/json", api_key=key)
    assert "Incorrect API key provided" in caught.value.message
    assert key not in caught.value.message and "sk-secr" not in caught.value.message
    assert caught.value.upstream_code == "invalid_request_error"


async def test_chunks_without_choices_are_ignored_and_finish_reason_is_kept() -> None:
    body = _sse(
        {"id": "chatcmpl-1", "choices": [], "prompt_filter_results": []},  # Azure's first chunk
        _chunk(delta={"content": "hi"}),
        _chunk(finish_reason="tool_calls", unknown_field=1),
        "[DONE]",
    )
    events = await _stream_events(body)
    assert events[0] == TextDelta("hi")
    assert events[-1].finish_reason == FinishReason.TOOL_CALLS  # type: ignore[attr-defined]
    assert events[-1].usage is None  # type: ignore[attr-defined]


async def test_done_without_a_finish_reason_is_a_broken_stream() -> None:
    with pytest.raises(UpstreamUnavailable, match="finish_reason"):
        await _stream_events(_sse(_chunk(delta={"content": "hi"}), "[DONE]"))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}, UpstreamRateLimited),
        ({"message": "too long", "code": "context_length_exceeded"}, UpstreamInvalidRequest),
        ({"message": "bad gateway", "code": 502}, UpstreamUnavailable),
        ({"message": "who knows", "type": "mystery"}, UpstreamUnavailable),
    ],
)
async def test_error_objects_in_a_stream_map_by_code(error: dict[str, Any], expected: type[Exception]) -> None:
    with pytest.raises(expected):
        await _stream_events(_sse(_chunk(delta={"content": "hi"}), {"error": error}))


async def test_json_error_body_instead_of_a_stream_is_mapped() -> None:
    body = json.dumps({"error": {"message": "quota", "code": "insufficient_quota"}}).encode()
    with pytest.raises(UpstreamRateLimited, match="quota"):
        await _stream_events(body, content_type="application/json")


async def test_upstream_silence_past_the_read_timeout_is_a_timeout(fake_openai: FakeOpenAI) -> None:
    service = _service(fake_openai, read_timeout_seconds=0.2)
    received: list[object] = []
    try:
        with pytest.raises(UpstreamTimeout):
            async for event in service.stream_chat(ChatInput((Message("user", "hi"),), {"model": fake.MODEL_STALL})):
                received.append(event)
    finally:
        await service.aclose()
    assert received == [TextDelta(piece) for piece in _first_pieces(2)]
    await fake_openai.wait_for_disconnect(timeout=2.0)


async def test_a_refused_upstream_may_be_retried_but_one_that_had_the_request_may_not() -> None:
    # Refused: the request never reached the upstream, so the guard may send it again. A hang-up
    # after the request went out, or a silence, may follow work the upstream did: not retried.
    @contextlib.asynccontextmanager
    async def refusing() -> AsyncIterator[int]:
        yield closed_port()

    cases: list[tuple[Callable[[], Any], type[UpstreamError], bool]] = [
        (refusing, UpstreamUnavailable, True),
        (lambda: misbehaving_server("hang up"), UpstreamUnavailable, False),
        (lambda: misbehaving_server("say nothing"), UpstreamTimeout, False),
    ]
    for server, expected, retry_safe in cases:
        async with server() as port:
            service = OpenAIChatService(
                "openai",
                base_url=f"http://127.0.0.1:{port}/v1",
                api_key="sk-test",
                default_model="m",
                read_timeout_seconds=0.2,
            )
            try:
                for call in (_chat, _streamed_events):
                    with pytest.raises(expected) as caught:
                        await call(service)
                    assert (caught.value.transient and caught.value.unprocessed) is retry_safe
            finally:
                await service.aclose()


async def _streamed_events(service: OpenAIChatService) -> list[object]:
    return [event async for event in service.stream_chat(_input())]


def _chat(service: OpenAIChatService) -> Any:
    return service.chat(_input())


async def test_the_environment_proxy_carries_calls_unless_no_proxy_exempts_the_host(
    monkeypatch: pytest.MonkeyPatch, fake_openai: FakeOpenAI
) -> None:
    proxied: list[str] = []

    async def forward_proxy(request: web.Request) -> web.Response:
        # A proxy gets the absolute URL; this one answers in the upstream's place.
        proxied.append(str(request.url))
        completion = {"id": "c1", "choices": [{"message": {"content": "via proxy"}, "finish_reason": "stop"}]}
        return web.json_response(completion)

    async with http_server({COMPLETIONS_PATH: forward_proxy}) as proxy:
        for variable in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "localhost")
        via_proxy = OpenAIChatService(
            "openai", base_url="http://upstream.example/v1", api_key="sk-test", default_model="m"
        )
        # The fake upstream is named "localhost" in its URL here, which NO_PROXY exempts.
        direct = OpenAIChatService(
            "openai",
            base_url=fake_openai.base_url.replace("127.0.0.1", "localhost"),
            api_key=fake_openai.api_key,
            default_model=fake.MODEL_NORMAL,
        )
        try:
            assert (await via_proxy.chat(_input())).content == "via proxy"
            assert proxied == ["http://upstream.example/v1/chat/completions"]
            assert (await direct.chat(_input())).content == fake.DEFAULT_ANSWER
            assert len(proxied) == 1
        finally:
            await via_proxy.aclose()
            await direct.aclose()


async def test_a_redirect_is_not_followed_so_the_key_goes_nowhere_else() -> None:
    elsewhere: list[str | None] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/elsewhere/chat/completions")

    async def other(request: web.Request) -> web.Response:
        elsewhere.append(request.headers.get("Authorization"))
        return web.json_response({"choices": [{"message": {"content": "redirected"}}]})

    async with http_server({COMPLETIONS_PATH: moved, "/elsewhere/chat/completions": other}) as base:
        service = OpenAIChatService("openai", base_url=f"{base}/v1", api_key="sk-test", default_model="m")
        try:
            with pytest.raises(UpstreamUnavailable, match="malformed"):
                await service.chat(_input())
        finally:
            await service.aclose()
    assert elsewhere == []


async def test_aclose_closes_the_shared_client(fake_openai: FakeOpenAI) -> None:
    service = _service(fake_openai)
    await service.chat(_input())
    session = service._session
    await service.aclose()
    assert session is not None and session.closed


# --- helpers ------------------------------------------------------------------------------------


async def _until(condition: Any, within: float = 2.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling the fake's counter is simplest here
            await asyncio.sleep(0.01)
