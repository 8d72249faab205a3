"""Tool calling through the OpenAI-compatible service: gRPC in, the fake upstream on 127.0.0.1, and the rules alone.

The fake calls the tools it is offered (``fake-tools``: each call's pieces in turn, as OpenAI streams
them; ``fake-tools-interleaved``: pieces of several calls interleaved by index) and answers in text
once the trailing messages are the tools' outputs; it refuses, as OpenAI does, a history whose tool
messages do not answer the calls before them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.protobuf import json_format, struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from clients import AIPlatformClient, AsyncAIPlatformClient
from clients.cli import EXIT_OK, main
from providers.base import ChatFinished, ChatInput, FinishReason, Message, TextDelta, ToolCall
from providers.openai import OpenAIChatService, ToolCallAssembler, whole_tool_calls
from tests.conftest import error_details
from tests.fakes import openai as fake
from tests.fakes._server import http_server
from tests.fakes.openai import FakeOpenAI
from tests.fakes.upstreams import answer, collect
from tests.harness import GatewayUnderTest

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
}
QUESTION = pb.ChatMessage(role="user", content="Weather in 北京 and Paris?")
OUTPUTS = ["北京: sunny, 25°C", "Paris: rain, 14°C"]


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


TOOLS = [
    pb.Tool(name="get_weather", description="The weather in a city", parameters=_struct(WEATHER_SCHEMA)),
    pb.Tool(name="get_time"),
]


@pytest.fixture
def gateway(openai_gateway: GatewayUnderTest) -> GatewayUnderTest:
    return openai_gateway


@pytest.fixture
def stub(gateway: Any) -> pb_grpc.AIPlatformServiceStub:
    stub: pb_grpc.AIPlatformServiceStub = gateway.stub
    return stub


def _request(
    request_type: type[Any], model: str = fake.MODEL_TOOLS, messages: list[pb.ChatMessage] | None = None, **fields: Any
) -> Any:
    fields.setdefault("tools", TOOLS)
    return request_type(
        service_name="openai", messages=messages or [QUESTION], parameters=_struct({"model": model}), **fields
    )


def _expected_calls(completion_id: str, names: list[str]) -> list[pb.ToolCall]:
    return [
        pb.ToolCall(
            id=fake.tool_call_id(completion_id, index),
            type="function",
            function_name=name,
            arguments=fake.tool_arguments(index),
        )
        for index, name in enumerate(names)
    ]


def _history(calls: Any) -> list[pb.ChatMessage]:
    """The question, the assistant turn that called ``calls``, and one output per call."""
    return [
        QUESTION,
        pb.ChatMessage(role="assistant", tool_calls=calls),
        *(
            pb.ChatMessage(role="tool", tool_call_id=call.id, content=output)
            for call, output in zip(calls, OUTPUTS, strict=True)
        ),
    ]


def _wire_history(calls: Any) -> list[dict[str, Any]]:
    """What the upstream must receive for ``_history(calls)``: OpenAI's shape."""
    return [
        {"role": "user", "content": QUESTION.content},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function_name, "arguments": call.arguments},
                }
                for call in calls
            ],
        },
        *(
            {"role": "tool", "tool_call_id": call.id, "content": output}
            for call, output in zip(calls, OUTPUTS, strict=True)
        ),
    ]


# --- the whole loop ---------------------------------------------------------------------------


async def test_a_streamed_tool_loop_asks_for_tools_then_answers_with_their_outputs(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    responses, error = await collect(stub.StreamChat(_request(pb.StreamChatRequest)))
    assert error is None
    final = responses[-1]
    assert [response.delta for response in responses] == [""], "a turn that only calls tools has no text"
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    first = fake_openai.requests[-1]
    assert list(final.tool_calls) == _expected_calls(first.completion_id, ["get_weather", "get_time"])
    assert final.chat_id == first.completion_id
    assert final.usage.total_tokens == fake.TOTAL_TOKENS

    responses, error = await collect(
        stub.StreamChat(_request(pb.StreamChatRequest, messages=_history(final.tool_calls)))
    )
    assert error is None
    assert "".join(response.delta for response in responses) == fake.tools_answer(OUTPUTS)
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    assert list(responses[-1].tool_calls) == []
    assert fake_openai.requests[-1].json["messages"] == _wire_history(final.tool_calls)


async def test_a_unary_tool_loop_asks_for_tools_then_answers_with_their_outputs(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    asked = await stub.Chat(_request(pb.ChatRequest))
    assert (asked.content, asked.finish_reason) == ("", pb.FINISH_REASON_TOOL_CALLS)
    first = fake_openai.requests[-1]
    assert first.json["stream"] is False
    assert list(asked.tool_calls) == _expected_calls(first.completion_id, ["get_weather", "get_time"])

    answered = await stub.Chat(_request(pb.ChatRequest, messages=_history(asked.tool_calls)))
    assert (answered.content, answered.finish_reason) == (fake.tools_answer(OUTPUTS), pb.FINISH_REASON_STOP)
    assert list(answered.tool_calls) == []
    assert fake_openai.requests[-1].json["messages"] == _wire_history(asked.tool_calls)


async def test_tools_reach_the_upstream_in_openais_shape(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    await stub.Chat(_request(pb.ChatRequest))
    assert fake_openai.requests[-1].json["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER_SCHEMA},
        },
        {"type": "function", "function": {"name": "get_time"}},
    ]
    # The fake parsed the raw JSON: an int here means the wire said 1, not 1.0.
    days = fake_openai.requests[-1].json["tools"][0]["function"]["parameters"]["properties"]["days"]
    assert type(days["minimum"]) is int


async def test_interleaved_tool_call_pieces_are_assembled_into_whole_calls(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    responses, error = await collect(stub.StreamChat(_request(pb.StreamChatRequest, fake.MODEL_TOOLS_INTERLEAVED)))
    assert error is None
    assert [response.delta for response in responses] == [fake.INTERLEAVED_TEXT, ""]
    final = responses[-1]
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    expected = _expected_calls(fake_openai.requests[-1].completion_id, ["get_weather", "get_time"])
    assert list(final.tool_calls) == expected
    assert [response.tool_calls for response in responses[:-1]] == [[]], "tool calls come on the final message only"


@pytest.mark.parametrize(
    ("tool_choice", "on_the_wire", "called"),
    [
        ("", None, ["get_weather", "get_time"]),
        ("auto", "auto", ["get_weather", "get_time"]),
        ("required", "required", ["get_weather", "get_time"]),
        ("get_time", {"type": "function", "function": {"name": "get_time"}}, ["get_time"]),
        ("none", "none", []),
    ],
)
@pytest.mark.parametrize("rpc", ["StreamChat", "Chat"])
async def test_each_tool_choice_reaches_the_upstream(
    stub: pb_grpc.AIPlatformServiceStub,
    fake_openai: FakeOpenAI,
    rpc: str,
    tool_choice: str,
    on_the_wire: Any,
    called: list[str],
) -> None:
    if rpc == "StreamChat":
        responses, error = await collect(stub.StreamChat(_request(pb.StreamChatRequest, tool_choice=tool_choice)))
        assert error is None
        final: Any = responses[-1]
    else:
        final = await stub.Chat(_request(pb.ChatRequest, tool_choice=tool_choice))
    sent = fake_openai.requests[-1]
    assert sent.json.get("tool_choice") == on_the_wire
    assert "tool_choice" in sent.json or not tool_choice, '"" leaves the choice to the upstream'
    assert [call.function_name for call in final.tool_calls] == called
    assert final.finish_reason == (pb.FINISH_REASON_TOOL_CALLS if called else pb.FINISH_REASON_STOP)


async def test_parallel_tool_calls_is_passed_through(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    request = _request(pb.ChatRequest)
    request.parameters.update({"parallel_tool_calls": False})
    await stub.Chat(request)
    assert fake_openai.requests[-1].json["parallel_tool_calls"] is False


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": [], "tool_choice": "auto"}, "tool_choice"),
        (
            {
                "messages": [
                    QUESTION,
                    pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="c1", type="reply_message")]),
                    pb.ChatMessage(role="tool", tool_call_id="c1", content="ok"),
                ]
            },
            "messages[1].tool_calls[0].type",
        ),
    ],
)
async def test_what_the_upstream_cannot_take_is_refused_before_it_sees_anything(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI, fields: dict[str, Any], field: str
) -> None:
    _, stream_error = await collect(stub.StreamChat(_request(pb.StreamChatRequest, **fields)))
    _, unary_error = await answer(stub.Chat(_request(pb.ChatRequest, **fields)))
    for error in (stream_error, unary_error):
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        violation = error_details(error)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
        assert violation.field == field
    assert fake_openai.requests == []


async def test_a_tool_output_that_answers_no_call_is_the_upstreams_invalid_argument(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    messages = [QUESTION, pb.ChatMessage(role="tool", tool_call_id="call_unknown", content="?")]
    _, error = await collect(stub.StreamChat(_request(pb.StreamChatRequest, messages=messages)))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(error)["ErrorInfo"].reason == "UPSTREAM_INVALID_REQUEST"  # type: ignore[attr-defined]
    assert "must be a response to a preceeding message with 'tool_calls'" in (error.details() or "")


# --- stream guarantees --------------------------------------------------------------------------


async def test_a_stream_cut_mid_tool_call_arguments_is_unavailable_never_ok(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    responses, error = await collect(stub.StreamChat(_request(pb.StreamChatRequest, fake.MODEL_TOOLS_CUT)))
    assert error is not None, "a stream cut inside a tool call's arguments must not end OK"
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"logid={fake_openai.requests[-1].request_id}" in (error.details() or "")
    assert all(not response.tool_calls and not response.finish_reason for response in responses)

    _, unary_error = await answer(stub.Chat(_request(pb.ChatRequest, fake.MODEL_TOOLS_CUT)))
    assert unary_error is not None and unary_error.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_slow_reader_still_gets_whole_tool_calls(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    call = stub.StreamChat(_request(pb.StreamChatRequest, fake.MODEL_TOOLS_INTERLEAVED))
    first = await call.read()
    assert first.delta == fake.INTERLEAVED_TEXT
    await asyncio.sleep(0.3)  # the upstream finishes meanwhile; the turn's end waits for the reader
    rest = []
    while (response := await call.read()) is not grpc.aio.EOF:
        rest.append(response)
    assert await call.code() == grpc.StatusCode.OK
    assert [response.finish_reason for response in rest] == [pb.FINISH_REASON_TOOL_CALLS]
    expected = _expected_calls(fake_openai.requests[-1].completion_id, ["get_weather", "get_time"])
    assert list(rest[0].tool_calls) == expected


# --- the Python client and the CLI ----------------------------------------------------------------


OPENAI_FORM_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather in a city", "parameters": WEATHER_SCHEMA},
    },
    {"name": "get_time"},
]


async def test_the_async_client_runs_a_whole_tool_loop(gateway: Any, fake_openai: FakeOpenAI) -> None:
    question = {"role": "user", "content": QUESTION.content}
    async with AsyncAIPlatformClient(gateway.target) as client:
        asked = await client.chat("openai", [question], {"model": fake.MODEL_TOOLS}, tools=OPENAI_FORM_TOOLS)
        assert asked.finish_reason == pb.FINISH_REASON_TOOL_CALLS
        assert fake_openai.requests[-1].json["tools"][0]["function"]["parameters"] == WEATHER_SCHEMA
        history: list[Any] = [
            question,
            {"role": "assistant", "tool_calls": asked.tool_calls},
            *(
                {"role": "tool", "tool_call_id": call.id, "content": out}
                for call, out in zip(asked.tool_calls, OUTPUTS, strict=True)
            ),
        ]
        streamed = await client.stream_chat("openai", history, {"model": fake.MODEL_TOOLS}, tools=OPENAI_FORM_TOOLS)
    assert streamed == fake.tools_answer(OUTPUTS)
    assert fake_openai.requests[-1].json["messages"] == _wire_history(asked.tool_calls)


async def test_the_blocking_client_takes_tools_tool_choice_and_chat_id(gateway: Any, fake_openai: FakeOpenAI) -> None:
    def call() -> pb.ChatResponse:
        with AIPlatformClient(gateway.target) as client:
            return client.chat(
                "openai",
                [("user", "time?")],
                {"model": fake.MODEL_TOOLS},
                tools=[pb.Tool(name="get_time"), {"name": "get_weather"}],
                tool_choice="get_time",
                chat_id="ignored-by-openai",
            )

    response = await asyncio.to_thread(call)
    assert [call.function_name for call in response.tool_calls] == ["get_time"]
    assert fake_openai.requests[-1].json["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}


@pytest.mark.parametrize(
    ("tools", "error_type"),
    [
        ({"name": "x"}, TypeError),
        (["get_time"], TypeError),
        ([{"description": "no name"}], ValueError),
        ([{"name": "x", "strict": True}], ValueError),
        ([{"name": "x", "parameters": {"n": 2**60}}], ValueError),
    ],
)
def test_malformed_tools_are_refused_before_any_call(tools: Any, error_type: type[Exception]) -> None:
    with AIPlatformClient("127.0.0.1:1") as client, pytest.raises(error_type):
        client.chat("openai", [("user", "hi")], tools=tools)


async def test_the_cli_runs_a_tool_loop_with_tools_and_messages_files(
    gateway: Any, fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(OPENAI_FORM_TOOLS))
    common = ["--target", gateway.target, "-p", f"model={fake.MODEL_TOOLS}", "--tools", str(tools_file)]

    code = await asyncio.to_thread(main, ["chat", "openai", QUESTION.content, "--no-stream", "--json", *common])
    out = capsys.readouterr().out
    assert code == EXIT_OK
    asked = json_format.Parse(out, pb.ChatResponse())
    assert len(asked.tool_calls) == 2

    # The history as a caller writes it from --json's output: the calls' fields as printed.
    printed_calls = json.loads(out)["tool_calls"]
    history = [
        {"role": "user", "content": QUESTION.content},
        {"role": "assistant", "tool_calls": printed_calls},
        *(
            {"role": "tool", "tool_call_id": call["id"], "content": out}
            for call, out in zip(printed_calls, OUTPUTS, strict=True)
        ),
    ]
    messages_file = tmp_path / "messages.json"
    messages_file.write_text(json.dumps(history, ensure_ascii=False))
    code = await asyncio.to_thread(main, ["chat", "openai", "--messages", str(messages_file), *common])
    captured = capsys.readouterr()
    assert (code, captured.out) == (EXIT_OK, fake.tools_answer(OUTPUTS) + "\n")
    assert fake_openai.requests[-1].json["messages"] == _wire_history(asked.tool_calls)


async def test_the_cli_prints_tool_calls_on_stderr(
    gateway: Any, fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([{"name": "get_time"}]))
    argv = ["chat", "openai", "time?", "--target", gateway.target, "-p", f"model={fake.MODEL_TOOLS}"]
    code = await asyncio.to_thread(main, [*argv, "--tools", str(tools_file), "--tool-choice", "required"])
    captured = capsys.readouterr()
    completion_id = fake_openai.requests[-1].completion_id
    assert code == EXIT_OK
    assert f"tool call {fake.tool_call_id(completion_id, 0)}: get_time({fake.tool_arguments(0)})" in captured.err
    assert "finish_reason: FINISH_REASON_TOOL_CALLS" in captured.err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("{not json", "cannot read"), ('{"name": "x"}', "expected a JSON list"), ('[{"nme": "x"}]', "needs 'name'")],
)
def test_a_bad_tools_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str
) -> None:
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(content)
    assert main(["chat", "openai", "hi", "--target", "127.0.0.1:1", "--tools", str(tools_file)]) == 2
    assert fragment in capsys.readouterr().err


def test_chat_without_text_or_messages_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "openai", "--target", "127.0.0.1:1"]) == 2
    assert "TEXT" in capsys.readouterr().err


# --- the rules alone ----------------------------------------------------------------------------


def test_pieces_of_interleaved_calls_are_joined_by_index() -> None:
    assembler = ToolCallAssembler()
    assembler.add([{"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": ""}}])
    assembler.add([{"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x"'}}])
    assembler.add([{"index": 1, "function": {"arguments": '{"y":'}}, {"index": 0, "function": {"arguments": ":1}"}}])
    assembler.add([{"index": 1, "function": {"arguments": "2}"}}])
    assert assembler.calls() == (
        ToolCall(id="a", type="function", function_name="f", arguments='{"x":1}'),
        ToolCall(id="b", type="function", function_name="g", arguments='{"y":2}'),
    )


def test_pieces_without_an_index_follow_their_id_or_the_last_call() -> None:
    assembler = ToolCallAssembler()
    assembler.add([{"id": "a", "function": {"name": "f", "arguments": "{"}}])
    assembler.add([{"function": {"arguments": "}"}}])
    assembler.add([{"id": "b", "function": {"name": "g", "arguments": "[1"}}])
    assembler.add([{"id": "b", "function": {"name": "g", "arguments": "]"}}])  # some servers repeat id and name
    assert [(call.id, call.function_name, call.arguments) for call in assembler.calls()] == [
        ("a", "f", "{}"),
        ("b", "g", "[1]"),
    ]


def test_what_is_no_call_piece_is_ignored_and_missing_fields_are_filled() -> None:
    assembler = ToolCallAssembler()
    assembler.add("not a list")
    assembler.add([None, 3, {"index": 0, "function": {"name": "f", "arguments": {"as": "object"}}}])
    assert assembler.calls() == (
        ToolCall(id="call_0", type="function", function_name="f", arguments='{"as": "object"}'),
    )


def test_a_whole_answers_tool_calls_are_read_in_order() -> None:
    calls = [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        "junk",
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": '{"k":1}'}},
    ]
    assert [call.id for call in whole_tool_calls(calls)] == ["a", "b"]
    assert whole_tool_calls(None) == ()


def _sse(*events: object) -> bytes:
    return b"".join(f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode() for event in events)


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


_CALL = {"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("finish_reason", "expected_reason", "expected_calls"),
    [
        ("tool_calls", FinishReason.TOOL_CALLS, 1),
        ("stop", FinishReason.TOOL_CALLS, 1),  # Ollama and older vLLM end a turn that called tools so
        ("length", FinishReason.LENGTH, 0),  # arguments may be cut short: no calls to run
    ],
)
async def test_the_finish_reason_of_a_turn_with_tool_calls(
    finish_reason: str, expected_reason: FinishReason, expected_calls: int
) -> None:
    body = _sse(_chunk({"tool_calls": [_CALL]}), _chunk({}, finish_reason), "[DONE]")

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/event-stream")

    async with http_server({"/v1/chat/completions": handler}) as base:
        service = OpenAIChatService("openai", base_url=f"{base}/v1", api_key="sk-test", default_model="m")
        try:
            events = [event async for event in service.stream_chat(ChatInput((Message("user", "hi"),)))]
        finally:
            await service.aclose()
    (finished,) = events
    assert isinstance(finished, ChatFinished)
    assert (finished.finish_reason, len(finished.tool_calls)) == (expected_reason, expected_calls)
    assert not any(isinstance(event, TextDelta) for event in events)
