"""Images and files in messages sent to a Coze bot: gRPC in, the fake Coze on 127.0.0.1.

A user message with parts becomes Coze's object_string content: one text item, and an image or
file item by file_url (a URL part), file_id (a Coze file id part, or the id of the upload of a
part sent as bytes: /v1/files/upload first, with its name and MIME type). Parts outside a user
message are refused with INVALID_ARGUMENT naming them, before Coze sees anything. A caller who
cancels, or whose deadline passes, while an upload is in flight stops the upload (its connection
is closed) and no chat is ever sent, and the gateway is left as it was.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from tests.conftest import error_details
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import answer, collect, until
from tests.harness import GatewayUnderTest, gateway_for

UPLOAD_PATH = "/v1/files/upload"
IMAGE_URL = "https://example.com/cat.png"
FILE_URL = "https://example.com/report.pdf"
# A 1x1 transparent PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
QUESTION = "这是什么？"
PNG_PART = pb.ContentPart(image=pb.ImagePart(data=PNG, mime_type="image/png"))
RPCS = ["StreamChat", "Chat"]
CANCEL_LATENCY = 1.0  # seconds from the caller's cancel (or deadline) to the upload's connection closed


def _start(
    stub: pb_grpc.AIPlatformServiceStub, rpc: str, messages: list[pb.ChatMessage], timeout: float | None = None
) -> Any:
    """The call to the normal bot, started."""
    parameters = struct_pb2.Struct()
    parameters.update({"bot_id": fake.BOT_NORMAL})
    if rpc == "StreamChat":
        request = pb.StreamChatRequest(service_name="coze", parameters=parameters, messages=messages)
        return stub.StreamChat(request, timeout=timeout)
    return stub.Chat(pb.ChatRequest(service_name="coze", parameters=parameters, messages=messages), timeout=timeout)


async def _chat(
    stub: pb_grpc.AIPlatformServiceStub, rpc: str, messages: list[pb.ChatMessage], timeout: float | None = None
) -> Any:
    """The call's error (None when it ended OK)."""
    if rpc == "StreamChat":
        responses, error = await collect(_start(stub, rpc, messages, timeout))
        assert error is not None or "".join(response.delta for response in responses) == fake.DEFAULT_ANSWER
        return error
    response, error = await answer(_start(stub, rpc, messages, timeout))
    assert error is not None or (response is not None and response.content == fake.DEFAULT_ANSWER)
    return error


def _asking(*parts: pb.ContentPart) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role="user", parts=[pb.ContentPart(text=QUESTION), *parts])]


def _sent_items(fake_coze: FakeCoze) -> tuple[dict[str, Any], ...]:
    (chat,) = fake_coze.received_chats
    (message,) = chat.messages
    assert (message.role, message.content_type) == ("user", "object_string")
    assert message.parts is not None
    return message.parts


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize(
    ("part", "kind", "name", "mime_type", "data"),
    [
        (PNG_PART, "image", "image.png", "image/png", PNG),
        (
            pb.ContentPart(file=pb.FilePart(data=PDF, name="报告.pdf", mime_type="application/pdf")),
            "file",
            "报告.pdf",
            "application/pdf",
            PDF,
        ),
    ],
    ids=["image", "file"],
)
async def test_a_part_sent_as_bytes_is_uploaded_then_referenced_by_its_file_id(
    stub: pb_grpc.AIPlatformServiceStub,
    fake_coze: FakeCoze,
    rpc: str,
    part: pb.ContentPart,
    kind: str,
    name: str,
    mime_type: str,
    data: bytes,
) -> None:
    assert await _chat(stub, rpc, _asking(part)) is None

    (uploaded,) = fake_coze.uploaded_files.values()
    assert uploaded.data == data
    assert (uploaded.file_name, uploaded.content_type) == (name, mime_type)
    assert _sent_items(fake_coze) == ({"type": "text", "text": QUESTION}, {"type": kind, "file_id": uploaded.id})
    upload, chat = (request.path for request in fake_coze.requests)
    assert (upload, chat) == (UPLOAD_PATH, "/v3/chat"), "the upload comes first"


@pytest.mark.parametrize("rpc", RPCS)
async def test_parts_by_url_are_passed_through_as_file_urls(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str
) -> None:
    image = pb.ContentPart(image=pb.ImagePart(url=IMAGE_URL))
    file = pb.ContentPart(file=pb.FilePart(url=FILE_URL))
    assert await _chat(stub, rpc, _asking(image, file)) is None

    assert _sent_items(fake_coze) == (
        {"type": "text", "text": QUESTION},
        {"type": "image", "file_url": IMAGE_URL},
        {"type": "file", "file_url": FILE_URL},
    )
    assert fake_coze.uploaded_files == {}


async def test_parts_by_coze_file_id_are_passed_through(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    # Two files uploaded to Coze earlier (the fake takes only ids it stored).
    await _chat(stub, "Chat", _asking(PNG_PART))
    await _chat(stub, "Chat", _asking(pb.ContentPart(file=pb.FilePart(data=PDF, name="a.pdf", mime_type="text/pdf"))))
    image_id, file_id = fake_coze.uploaded_files
    fake_coze.received_chats.clear()

    image = pb.ContentPart(image=pb.ImagePart(file_id=image_id))
    file = pb.ContentPart(file=pb.FilePart(file_id=file_id))
    assert await _chat(stub, "StreamChat", _asking(image, file)) is None

    assert _sent_items(fake_coze) == (
        {"type": "text", "text": QUESTION},
        {"type": "image", "file_id": image_id},
        {"type": "file", "file_id": file_id},
    )
    assert len(fake_coze.uploaded_files) == 2, "nothing is uploaded again"


async def test_text_parts_are_joined_into_the_one_text_item_coze_takes(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    messages = [
        pb.ChatMessage(
            role="user",
            parts=[
                pb.ContentPart(text="第一段"),
                pb.ContentPart(image=pb.ImagePart(url=IMAGE_URL)),
                pb.ContentPart(text="第二段"),
            ],
        )
    ]
    assert await _chat(stub, "StreamChat", messages) is None
    assert _sent_items(fake_coze) == (
        {"type": "text", "text": "第一段\n第二段"},
        {"type": "image", "file_url": IMAGE_URL},
    )


async def test_parts_of_text_only_are_a_text_message(stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze) -> None:
    messages = [pb.ChatMessage(role="user", parts=[pb.ContentPart(text="一"), pb.ContentPart(text="二")])]
    assert await _chat(stub, "StreamChat", messages) is None
    (chat,) = fake_coze.received_chats
    (message,) = chat.messages
    assert (message.content_type, message.content, message.parts) == ("text", "一\n二", None)


@pytest.mark.parametrize("rpc", RPCS)
async def test_parts_outside_a_user_message_are_refused_before_any_upload(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str
) -> None:
    messages = [
        pb.ChatMessage(role="assistant", parts=[PNG_PART]),
        pb.ChatMessage(role="user", content=QUESTION),
    ]
    error = await _chat(stub, rpc, messages)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = error_details(error)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == "messages[0].parts"
    assert "user message" in violation.description
    assert fake_coze.requests == []


async def test_an_upload_coze_refuses_fails_the_call_before_the_chat(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    fake_coze.max_upload_bytes = len(PNG) - 1
    error = await _chat(stub, "StreamChat", _asking(PNG_PART))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(error)["ErrorInfo"].metadata["upstream_code"] == "4302"  # type: ignore[attr-defined]
    assert [request.path for request in fake_coze.requests] == [UPLOAD_PATH]


async def test_a_part_over_the_gateways_limit_is_refused_before_any_upload(fake_coze: FakeCoze) -> None:
    async with gateway_for(fake_coze=fake_coze, max_part_bytes=len(PNG) - 1) as gateway:
        error = await _chat(gateway.stub, "StreamChat", _asking(PNG_PART))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fake_coze.requests == []


# --- a caller who leaves while an upload is in flight --------------------------------------------


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_cancel_during_an_upload_closes_it_and_no_chat_is_sent(
    gateway: GatewayUnderTest, fake_coze: FakeCoze, rpc: str
) -> None:
    fake_coze.stall_uploads = True
    call = _start(gateway.stub, rpc, _asking(PNG_PART))
    await fake_coze.wait_for_requests(UPLOAD_PATH)
    await until(lambda: fake_coze.open_streams == 1)  # the file arrived; the gateway waits for its id

    cancelled_at = time.monotonic()
    call.cancel()
    disconnect = await fake_coze.wait_for_disconnect()

    assert await call.code() == grpc.StatusCode.CANCELLED
    assert (disconnect.path, disconnect.scenario) == (UPLOAD_PATH, "image.png")
    assert disconnect.time - cancelled_at < CANCEL_LATENCY
    await _assert_left_clean(gateway, fake_coze, rpc)


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_deadline_passing_during_an_upload_closes_it_and_no_chat_is_sent(
    gateway: GatewayUnderTest, fake_coze: FakeCoze, rpc: str
) -> None:
    fake_coze.stall_uploads = True
    deadline = 0.5
    started = time.monotonic()
    error = await _chat(gateway.stub, rpc, _asking(PNG_PART), timeout=deadline)
    disconnect = await fake_coze.wait_for_disconnect()

    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (disconnect.path, disconnect.scenario) == (UPLOAD_PATH, "image.png")
    assert disconnect.time - started < deadline + CANCEL_LATENCY
    await _assert_left_clean(gateway, fake_coze, rpc)


async def _assert_left_clean(gateway: GatewayUnderTest, fake_coze: FakeCoze, rpc: str) -> None:
    """After a call left during its upload: the call ended, Coze saw the upload only, and the next call works."""
    guard = gateway.registry.guard(gateway.registry.chat_service("coze"))
    await until(lambda: guard.running == 0 and fake_coze.open_streams == 0)
    assert [request.path for request in fake_coze.requests] == [UPLOAD_PATH], "no chat, and so no cancel"
    assert (fake_coze.created_chats, fake_coze.uploaded_files) == ([], {})

    fake_coze.stall_uploads = False
    assert await _chat(gateway.stub, rpc, _asking(PNG_PART)) is None
    # Had the abandoned call gone on to its chat, it would show up by now, before or beside this one.
    (uploaded,) = fake_coze.uploaded_files.values()
    assert [request.path for request in fake_coze.requests] == [UPLOAD_PATH, UPLOAD_PATH, "/v3/chat"]
    assert _sent_items(fake_coze)[1] == {"type": "image", "file_id": uploaded.id}
    await until(lambda: guard.running == 0)
