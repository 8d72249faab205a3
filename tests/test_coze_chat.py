"""The coze service end to end: gRPC in, the real cozepy client out, a fake Coze on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from server.settings import CozeSettings
from tests.conftest import error_details, make_settings
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import collect
from tests.harness import gateway_for

HI = [pb.ChatMessage(role="user", content="hi")]


def _parameters(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _stream_request(bot_id: str = fake.BOT_NORMAL, **fields: Any) -> pb.StreamChatRequest:
    fields.setdefault("messages", HI)
    return pb.StreamChatRequest(service_name="coze", parameters=_parameters(bot_id=bot_id), **fields)


def _chat_request(bot_id: str = fake.BOT_NORMAL, **fields: Any) -> pb.ChatRequest:
    fields.setdefault("messages", HI)
    return pb.ChatRequest(service_name="coze", parameters=_parameters(bot_id=bot_id), **fields)


def _chat_posts(fake_coze: FakeCoze) -> list[fake.RecordedRequest]:
    return [request for request in fake_coze.requests if request.path == "/v3/chat"]


async def test_stream_chat_relays_each_delta_and_ends_with_usage(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request()))

    assert error is None
    deltas = [response.delta for response in responses[:-1]]
    assert len(deltas) > 1, "the answer must arrive in pieces, as Coze sent them"
    assert "".join(deltas) == fake.DEFAULT_ANSWER
    final = responses[-1]
    assert final.finish_reason == pb.FINISH_REASON_STOP
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.total_tokens) == (
        fake.CHAT_USAGE_INPUT_COUNT,
        fake.CHAT_USAGE_OUTPUT_COUNT,
        fake.CHAT_USAGE_TOKEN_COUNT,
    )
    assert len(final.conversation_id) == 19 and final.chat_id


async def test_messages_user_id_and_conversation_reach_coze(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    request = _stream_request(
        messages=[
            pb.ChatMessage(role="user", content="第一问"),
            pb.ChatMessage(role="assistant", content="第一答"),
            pb.ChatMessage(role="user", content="第二问"),
        ],
        user_id="user-42",
        conversation_id="7381473525342978089",
    )
    request.parameters.update({"custom_variables": {"name": "小明"}, "meta_data": {"trace": "t-1"}})
    responses, error = await collect(stub.StreamChat(request))

    assert error is None
    assert responses[-1].conversation_id == "7381473525342978089"
    (sent,) = _chat_posts(fake_coze)
    assert sent.query["conversation_id"] == "7381473525342978089"
    assert sent.json["bot_id"] == fake.BOT_NORMAL
    assert sent.json["user_id"] == "user-42"
    assert sent.json["stream"] is True
    assert [(m["role"], m["type"], m["content"]) for m in sent.json["additional_messages"]] == [
        ("user", "question", "第一问"),
        ("assistant", "answer", "第一答"),
        ("user", "question", "第二问"),
    ]
    assert sent.json["custom_variables"] == {"name": "小明"}
    assert sent.json["meta_data"] == {"trace": "t-1"}
    assert sent.headers["authorization"] == f"Bearer {fake_coze.token}"


async def test_calls_without_user_id_get_distinct_anonymous_users(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    await stub.Chat(_chat_request())
    await stub.Chat(_chat_request())
    first, second = (request.json["user_id"] for request in _chat_posts(fake_coze))
    assert first and second and first != second


async def test_chat_joins_the_stream_without_polling(stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze) -> None:
    response = await stub.Chat(_chat_request())

    assert response.content == fake.DEFAULT_ANSWER
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert response.usage.total_tokens == fake.CHAT_USAGE_TOKEN_COUNT
    assert response.conversation_id and response.chat_id
    assert [request.path for request in fake_coze.requests] == ["/v3/chat"]


async def test_reasoning_goes_to_reasoning_delta(stub: pb_grpc.AIPlatformServiceStub) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request(fake.BOT_REASONING)))
    assert error is None
    assert "".join(response.reasoning_delta for response in responses) == "".join(fake.REASONING_PIECES)
    assert "".join(response.delta for response in responses) == fake.DEFAULT_ANSWER

    whole = await stub.Chat(_chat_request(fake.BOT_REASONING))
    assert (whole.reasoning, whole.content) == ("".join(fake.REASONING_PIECES), fake.DEFAULT_ANSWER)


@pytest.mark.parametrize("bot_id", [fake.BOT_VERBOSE_AND_UNKNOWN, fake.BOT_COMPLETED_ONLY])
async def test_only_answer_text_reaches_the_answer(stub: pb_grpc.AIPlatformServiceStub, bot_id: str) -> None:
    response = await stub.Chat(_chat_request(bot_id))
    assert response.content == fake.DEFAULT_ANSWER
    assert fake.FOLLOW_UP_QUESTION not in response.content


async def test_default_bot_id_comes_from_settings(fake_coze: FakeCoze) -> None:
    settings = make_settings(fake_coze)
    settings.coze = CozeSettings(
        _env_file=None, api_token=fake_coze.token, api_base=fake_coze.base_url, default_bot_id="bot-from-settings"
    )
    async with gateway_for(settings) as gateway:
        stub = gateway.stub
        response = await stub.Chat(pb.ChatRequest(service_name="coze", messages=HI))
    assert response.content == fake.DEFAULT_ANSWER
    assert _chat_posts(fake_coze)[0].json["bot_id"] == "bot-from-settings"


async def test_requires_action_ends_with_tool_calls(stub: pb_grpc.AIPlatformServiceStub) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request(fake.BOT_REQUIRES_ACTION)))
    assert error is None
    assert responses[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS


async def test_split_utf8_characters_arrive_whole(stub: pb_grpc.AIPlatformServiceStub) -> None:
    response = await stub.Chat(_chat_request(fake.BOT_SPLIT_UTF8))
    assert response.content == fake.SPLIT_UTF8_ANSWER


async def test_line_separators_raw_inside_json_strings_arrive_intact(stub: pb_grpc.AIPlatformServiceStub) -> None:
    # U+2028, U+0085 and U+001C, sent raw: a reader that ends lines where str.splitlines()
    # does would cut these deltas in two and fail the stream.
    responses, error = await collect(stub.StreamChat(_stream_request(fake.BOT_LINE_SEPARATORS)))

    assert error is None
    assert [response.delta for response in responses[:-1]] == fake.split_answer(fake.LINE_SEPARATORS_ANSWER)
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP


async def test_heartbeat_comment_between_events_is_ignored(stub: pb_grpc.AIPlatformServiceStub) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request(fake.BOT_HEARTBEAT)))

    assert error is None
    assert "".join(response.delta for response in responses) == fake.DEFAULT_ANSWER
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bot_id", "code", "reason", "upstream_code"),
    [
        (fake.BOT_MISSING, grpc.StatusCode.NOT_FOUND, "UPSTREAM_NOT_FOUND", "4200"),
        (fake.BOT_BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT, "UPSTREAM_INVALID_REQUEST", "4000"),
        (fake.BOT_RATE_LIMITED, grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED", "4013"),
        (fake.BOT_HTTP_502, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "502"),
    ],
)
async def test_errors_before_the_first_event_map_to_statuses(
    stub: pb_grpc.AIPlatformServiceStub,
    fake_coze: FakeCoze,
    bot_id: str,
    code: grpc.StatusCode,
    reason: str,
    upstream_code: str,
) -> None:
    for rpc in ("StreamChat", "Chat"):
        responses: list[object]
        if rpc == "StreamChat":
            responses, error = await collect(stub.StreamChat(_stream_request(bot_id)))
        else:
            responses, error = await _unary(stub.Chat(_chat_request(bot_id)))
        assert responses == []
        assert error is not None and error.code() == code
        log_id = fake_coze.requests[-1].log_id
        assert f"logid={log_id}" in (error.details() or "")
        info = error_details(error)["ErrorInfo"]
        assert info.reason == reason  # type: ignore[attr-defined]
        assert dict(info.metadata) == {"provider": "coze", "upstream_code": upstream_code, "log_id": log_id}  # type: ignore[attr-defined]


async def _unary(call: Any) -> tuple[list[object], grpc.aio.AioRpcError | None]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return [], error
    return [], None


async def test_rate_limit_carries_retry_info(stub: pb_grpc.AIPlatformServiceStub) -> None:
    _, error = await collect(stub.StreamChat(_stream_request(fake.BOT_RATE_LIMITED)))
    assert error is not None
    assert error_details(error)["RetryInfo"].retry_delay.seconds == fake.RETRY_AFTER_SECONDS  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("bot_id", "code", "fragments"),
    [
        (fake.BOT_ERROR_EVENT, grpc.StatusCode.UNAVAILABLE, ["code=5000", "internal error"]),
        (fake.BOT_FAILED, grpc.StatusCode.UNAVAILABLE, ["code=5000", "event interval error"]),
        (fake.BOT_CUT, grpc.StatusCode.UNAVAILABLE, ["broke the connection"]),
        (fake.BOT_MALFORMED, grpc.StatusCode.UNAVAILABLE, ["malformed"]),
        (fake.BOT_NOT_AN_OBJECT, grpc.StatusCode.UNAVAILABLE, ["malformed"]),
    ],
)
async def test_failures_after_chunks_deliver_the_chunks_then_fail(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, bot_id: str, code: grpc.StatusCode, fragments: list[str]
) -> None:
    responses, error = await collect(stub.StreamChat(_stream_request(bot_id)))

    assert [response.delta for response in responses] == _first_pieces(2)
    assert error is not None, "a stream the upstream did not finish must not end OK"
    assert error.code() == code
    for fragment in fragments:
        assert fragment in (error.details() or "")
    chat_request = [request for request in fake_coze.requests if request.path == "/v3/chat"][-1]
    assert f"logid={chat_request.log_id}" in (error.details() or "")

    unary_error = (await _unary(stub.Chat(_chat_request(bot_id))))[1]
    assert unary_error is not None and unary_error.code() == code


def _first_pieces(count: int) -> list[str]:
    answer, size = fake.DEFAULT_ANSWER, fake.ANSWER_PIECE_CHARS
    return [answer[index : index + size] for index in range(0, size * count, size)]


async def test_wrong_token_is_the_gateways_configuration_and_never_leaks(fake_coze: FakeCoze) -> None:
    wrong_token = "pat_wrong_token_ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    settings = make_settings(fake_coze)
    settings.coze = CozeSettings(_env_file=None, api_token=wrong_token, api_base=fake_coze.base_url)
    async with gateway_for(settings) as gateway:
        stub = gateway.stub
        _, stream_error = await collect(stub.StreamChat(_stream_request()))
        _, unary_error = await _unary(stub.Chat(_chat_request()))
    for error in (stream_error, unary_error):
        assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "COZE_API_TOKEN" in (error.details() or "")
        assert wrong_token not in (error.details() or "")
        assert wrong_token.encode() not in b"".join(
            value if isinstance(value, bytes) else value.encode() for _, value in error.trailing_metadata() or ()
        )


async def test_unreachable_coze_is_unavailable(fake_coze: FakeCoze) -> None:
    settings = make_settings(fake_coze)
    await fake_coze.stop()  # nothing listens on its port any more
    async with gateway_for(settings) as gateway:
        stub = gateway.stub
        _, error = await collect(stub.StreamChat(_stream_request()))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE


# --- cancellation and deadlines ----------------------------------------------------------------


async def test_cancelled_stream_closes_the_upstream_connection(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    call = stub.StreamChat(_stream_request(fake.BOT_STALL))
    received = [await call.read(), await call.read()]
    assert [response.delta for response in received] == _first_pieces(2)

    cancelled_at = time.monotonic()
    call.cancel()
    disconnect = await fake_coze.wait_for_disconnect(timeout=2.0)

    assert disconnect.scenario == fake.BOT_STALL
    assert disconnect.time - cancelled_at < 1.0
    await _until(lambda: fake_coze.open_streams == 0)


@pytest.mark.parametrize("rpc", ["StreamChat", "Chat"])
async def test_deadline_bounds_a_stalled_upstream_and_closes_it(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str
) -> None:
    started = time.monotonic()
    if rpc == "StreamChat":
        _, error = await collect(stub.StreamChat(_stream_request(fake.BOT_STALL), timeout=0.5))
    else:
        _, error = await _unary(stub.Chat(_chat_request(fake.BOT_STALL), timeout=0.5))
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    disconnect = await fake_coze.wait_for_disconnect(timeout=2.0)
    assert disconnect.time - started < 1.5


async def test_final_message_does_not_wait_for_a_lingering_body(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    started = time.monotonic()
    responses, error = await collect(stub.StreamChat(_stream_request(fake.BOT_NO_CLOSE)))
    assert error is None
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    # The fake keeps its body open for NO_CLOSE_SECONDS after `done`; the gateway must not.
    assert time.monotonic() - started < fake.NO_CLOSE_SECONDS


# --- helpers ------------------------------------------------------------------------------------


async def _until(condition: Any, within: float = 2.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling the fake's counter is simplest here
            await asyncio.sleep(0.01)
