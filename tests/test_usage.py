"""The gateway's token estimates (server/usage.py): what a call is billed when the upstream reports nothing."""

from __future__ import annotations

from aiplatform.v1 import aiplatform_pb2 as pb
from server.usage import UsageMeter, UsageSource, estimate_input_tokens, estimate_tokens


def test_four_ascii_characters_or_one_other_character_make_a_token_rounded_up() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("你好") == 2
    assert estimate_tokens("hi 你好") == 1 + 2


def test_the_input_counts_text_parts_tool_calls_and_tool_schemas() -> None:
    plain = pb.ChatRequest(messages=[pb.ChatMessage(role="user", content="hello world")])
    assert estimate_input_tokens(plain) == estimate_tokens("hello world") + 4
    richer = pb.ChatRequest(
        messages=[
            pb.ChatMessage(
                role="user",
                parts=[pb.ContentPart(text="hello world"), pb.ContentPart(image=pb.ImagePart(url="https://x/a.png"))],
            ),
            pb.ChatMessage(
                role="assistant",
                tool_calls=[pb.ToolCall(id="c1", function_name="get_weather", arguments='{"city":"x"}')],
            ),
        ],
        tools=[pb.Tool(name="get_weather", description="The weather in a city")],
    )
    text = estimate_tokens("hello world") + 4 + 4
    image = 765
    call = estimate_tokens("get_weather") + estimate_tokens('{"city":"x"}')
    schema = estimate_tokens("get_weather") + estimate_tokens("The weather in a city")
    assert estimate_input_tokens(richer) == text + image + call + schema


def test_a_stream_of_tiny_deltas_is_estimated_as_its_whole_text() -> None:
    meter = UsageMeter("/aiplatform.v1.AIPlatformService/StreamChat")
    meter.begin(pb.StreamChatRequest(messages=[pb.ChatMessage(role="user", content="hi")]))
    answer = "one token is four characters of English"
    for character in answer:
        meter.observe(pb.StreamChatResponse(delta=character))
    final = pb.StreamChatResponse(finish_reason=pb.FINISH_REASON_STOP)
    meter.observe(final)
    assert final.usage.source == pb.USAGE_SOURCE_ESTIMATED
    assert final.usage.output_tokens == estimate_tokens(answer)
    assert meter.final(upstream_worked=True) == (
        estimate_tokens("hi") + 4,
        estimate_tokens(answer),
        UsageSource.ESTIMATED,
    )


def test_reported_usage_wins_and_a_call_the_upstream_never_saw_uses_nothing() -> None:
    meter = UsageMeter("/aiplatform.v1.AIPlatformService/Chat")
    meter.begin(pb.ChatRequest(messages=[pb.ChatMessage(role="user", content="hi")]))
    answer = pb.ChatResponse(
        content="hello",
        usage=pb.Usage(input_tokens=9, output_tokens=2, total_tokens=11, source=pb.USAGE_SOURCE_REPORTED),
    )
    meter.observe(answer)
    assert meter.final(upstream_worked=True) == (9, 2, UsageSource.REPORTED)
    untouched = UsageMeter("/aiplatform.v1.AIPlatformService/Chat")
    untouched.begin(pb.ChatRequest(messages=[pb.ChatMessage(role="user", content="hi")]))
    assert untouched.final(upstream_worked=False) == (0, 0, UsageSource.UNSPECIFIED)
