"""Images and files in messages sent to the OpenAI-compatible service: gRPC in, the fake upstream on 127.0.0.1.

Text and images become OpenAI content arrays (bytes as a data URL); what the Chat Completions API
cannot take here (files, provider file ids, an image outside a user message) is refused with
INVALID_ARGUMENT naming the part, before the upstream sees anything.
"""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from clients import AIPlatformClient, AsyncAIPlatformClient
from providers.base import ChatInput, FilePart, Message, TextPart
from providers.errors import InvalidRequest
from providers.openai import OpenAIChatService
from tests.conftest import error_details
from tests.fakes import openai as fake
from tests.fakes.openai import FakeOpenAI
from tests.fakes.upstreams import answer, collect
from tests.harness import GatewayUnderTest

IMAGE_URL = "https://example.com/cat.png"
# A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
QUESTION = pb.ContentPart(text="What is in this picture?")


@pytest.fixture
def gateway(openai_gateway: GatewayUnderTest) -> GatewayUnderTest:
    return openai_gateway


@pytest.fixture
def stub(gateway: Any) -> pb_grpc.AIPlatformServiceStub:
    stub: pb_grpc.AIPlatformServiceStub = gateway.stub
    return stub


async def _call(stub: pb_grpc.AIPlatformServiceStub, rpc: str, messages: list[pb.ChatMessage]) -> Any:
    """The call's error (None when it ended OK)."""
    if rpc == "StreamChat":
        _, error = await collect(stub.StreamChat(pb.StreamChatRequest(service_name="openai", messages=messages)))
        return error
    _, error = await answer(stub.Chat(pb.ChatRequest(service_name="openai", messages=messages)))
    return error


RPCS = ["StreamChat", "Chat"]


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("image", "url"),
    [
        (pb.ImagePart(url=IMAGE_URL), IMAGE_URL),
        (pb.ImagePart(data=PNG, mime_type="image/png"), "data:image/png;base64," + base64.b64encode(PNG).decode()),
    ],
    ids=["url", "bytes"],
)
async def test_an_image_reaches_the_upstream_as_a_content_array(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI, rpc: str, image: pb.ImagePart, url: str
) -> None:
    message = pb.ChatMessage(role="user", parts=[QUESTION, pb.ContentPart(image=image)])
    assert await _call(stub, rpc, [message]) is None

    sent = fake_openai.requests[-1].json["messages"]
    assert sent == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION.text},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


async def test_image_bytes_arrive_unchanged(stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI) -> None:
    jpeg = bytes(range(256)) * 3  # every byte value, as a JPEG's bytes may hold
    image = pb.ContentPart(image=pb.ImagePart(data=jpeg, mime_type="image/jpeg"))
    assert await _call(stub, "Chat", [pb.ChatMessage(role="user", parts=[image])]) is None
    url = fake_openai.requests[-1].json["messages"][0]["content"][0]["image_url"]["url"]
    header, _, data = url.partition(",")
    assert header == "data:image/jpeg;base64"
    assert base64.b64decode(data, validate=True) == jpeg


async def test_text_parts_of_other_roles_are_content_arrays_too(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    messages = [
        pb.ChatMessage(role="system", parts=[pb.ContentPart(text="Be terse."), pb.ContentPart(text="Use English.")]),
        pb.ChatMessage(role="user", content="hi"),
    ]
    assert await _call(stub, "StreamChat", messages) is None
    assert fake_openai.requests[-1].json["messages"] == [
        {
            "role": "system",
            "content": [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Use English."}],
        },
        {"role": "user", "content": "hi"},
    ]


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("role", "part", "field"),
    [
        ("user", pb.ContentPart(file=pb.FilePart(url="https://example.com/report.pdf")), "messages[0].parts[1]"),
        (
            "user",
            pb.ContentPart(file=pb.FilePart(data=b"%PDF-1.7", name="report.pdf", mime_type="application/pdf")),
            "messages[0].parts[1]",
        ),
        ("user", pb.ContentPart(file=pb.FilePart(file_id="file-abc123")), "messages[0].parts[1]"),
        ("user", pb.ContentPart(image=pb.ImagePart(file_id="file-abc123")), "messages[0].parts[1].image.file_id"),
        ("assistant", pb.ContentPart(image=pb.ImagePart(url=IMAGE_URL)), "messages[0].parts[1]"),
    ],
    ids=["file-url", "file-bytes", "file-id", "image-file-id", "image-from-assistant"],
)
async def test_a_part_the_upstream_cannot_take_is_refused_naming_it_before_the_upstream_sees_anything(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI, rpc: str, role: str, part: pb.ContentPart, field: str
) -> None:
    messages = [pb.ChatMessage(role=role, parts=[QUESTION, part]), pb.ChatMessage(role="user", content="well?")]
    error = await _call(stub, rpc, messages)

    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    violation = error_details(error)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == field
    assert fake_openai.requests == []


async def test_an_image_type_the_upstream_refuses_is_its_invalid_argument(
    stub: pb_grpc.AIPlatformServiceStub, fake_openai: FakeOpenAI
) -> None:
    image = pb.ContentPart(image=pb.ImagePart(data=b"BM...", mime_type="image/bmp"))
    error = await _call(stub, "StreamChat", [pb.ChatMessage(role="user", parts=[QUESTION, image])])
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(error)["ErrorInfo"].reason == "UPSTREAM_INVALID_REQUEST"  # type: ignore[attr-defined]
    assert "unsupported image" in (error.details() or "")
    assert len(fake_openai.requests) == 1


async def test_the_client_sends_parts_given_as_dicts(gateway: Any, fake_openai: FakeOpenAI) -> None:
    message = {
        "role": "user",
        "parts": [
            {"text": "Two pictures:"},
            {"image": {"url": IMAGE_URL}},
            {"image": {"data": PNG, "mime_type": "image/png"}},
        ],
    }
    async with AsyncAIPlatformClient(gateway.target) as client:
        text = await client.stream_chat("openai", [message])
    assert text == fake.DEFAULT_ANSWER
    content = fake_openai.requests[-1].json["messages"][0]["content"]
    assert [part["type"] for part in content] == ["text", "image_url", "image_url"]
    assert content[2]["image_url"]["url"].startswith("data:image/png;base64,")


def test_the_client_refuses_a_part_of_an_unknown_kind() -> None:
    with AIPlatformClient("127.0.0.1:1") as client, pytest.raises(ValueError, match=r"messages\[0\]"):
        client.chat("openai", [{"role": "user", "parts": [{"audio": {"url": IMAGE_URL}}]}])


async def test_the_provider_called_alone_refuses_a_file_before_any_request() -> None:
    service = OpenAIChatService("openai", base_url="http://127.0.0.1:9/v1", api_key="sk-unused", default_model="m")
    file = FilePart(url="https://example.com/report.pdf")
    request = ChatInput((Message("user", "", parts=(TextPart("read this"), file)),))
    try:
        with pytest.raises(InvalidRequest) as caught:
            async for _ in service.stream_chat(request):
                pass
        assert caught.value.field == "messages[0].parts[1]"
    finally:
        await service.aclose()
