"""A message's images and files as Coze's multimodal content: ``object_string`` items, bytes uploaded first.

Coze takes images and files in a user message only, as ``content_type: "object_string"`` with
``content`` the JSON text of an array of ``{"type": "text", "text"}`` and
``{"type": "image" | "file", "file_id" | "file_url"}`` items (DOC-CHAT). A part sent as bytes is
uploaded with /v1/files/upload (multipart field ``file``, with its name and MIME type) and then
referenced by the file id Coze returns. The upload is a request this module builds, sends and
reads whole (httpx closes it), inside the chat call: a caller who leaves stops it, and its
failures are the package's typed errors.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Sequence
from typing import Any

import cozepy
import httpx

from providers.base import ContentPart, FilePart, ImagePart, Message, TextPart
from providers.coze.clients import CozeClients
from providers.coze.errors import LOG_ID_HEADER, PROVIDER, error_answer, is_rate_limit, json_object, map_coze_errors
from providers.errors import InvalidRequest, UpstreamUnavailable, quote_input

UPLOAD_PATH = "/v1/files/upload"


def check_parts(message: Message, field: str, service: str) -> None:
    """Refuse parts Coze cannot take: parts outside a user message (Coze takes multimodal input from users only)."""
    if message.parts and message.role != "user":
        raise InvalidRequest(
            f"{field}.parts",
            f"service {service!r} takes images and files in a user message only "
            f"(this one is {quote_input(message.role)}): send its text as content",
        )


def has_parts(messages: Sequence[Message]) -> bool:
    """Whether any message carries parts (the common text chat pays one scan for them)."""
    return any(message.parts for message in messages)


async def user_message(clients: CozeClients, parts: Sequence[ContentPart]) -> dict[str, Any]:
    """A user message with ``parts`` as /v3/chat's additional_messages item, uploading the parts sent as bytes.

    Text parts are joined (by a newline) into one text item, where the first stood: Coze takes
    at most one, and only next to an image or a file; parts of text only are a text message.
    """
    texts = [part.text for part in parts if isinstance(part, TextPart)]
    if len(texts) == len(parts):
        return cozepy.Message.build_user_question_text("\n".join(texts)).model_dump()
    items: list[dict[str, str]] = []
    for part in parts:
        if isinstance(part, TextPart):
            if texts:
                items.append({"type": "text", "text": "\n".join(texts)})
                texts = []
        else:
            items.append(await _file_item(clients, part))
    message = cozepy.Message(
        role=cozepy.MessageRole.USER,
        type=cozepy.MessageType.QUESTION,
        content=json.dumps(items, ensure_ascii=False),
        content_type=cozepy.MessageContentType.OBJECT_STRING,
    )
    return message.model_dump()


async def _file_item(clients: CozeClients, part: ImagePart | FilePart) -> dict[str, str]:
    kind = "image" if isinstance(part, ImagePart) else "file"
    if part.file_id:
        return {"type": kind, "file_id": part.file_id}
    if part.url:
        return {"type": kind, "file_url": part.url}
    name = part.name if isinstance(part, FilePart) else _image_name(part.mime_type)
    return {"type": kind, "file_id": await upload_file(clients, name, part.data, part.mime_type)}


def _image_name(mime_type: str) -> str:
    # An image part has no name; Coze wants one with the upload, and its extension tells the type.
    return "image" + (mimetypes.guess_extension(mime_type) or "")


async def upload_file(clients: CozeClients, name: str, data: bytes, mime_type: str) -> str:
    """Upload one file with /v1/files/upload; returns its Coze file id. Raises the typed error of a refusal."""
    headers = await clients.identity_headers()
    request = httpx.Request(
        "POST", f"{clients.base_url}{UPLOAD_PATH}", headers=headers, files={"file": (name, data, mime_type)}
    )
    with map_coze_errors():
        # Not streamed: the client reads the whole answer and closes the response.
        response = await clients.http.send(request)
    payload = json_object(response.content)
    if payload is None or payload.get("code"):
        # A refusal for the rate proves nothing was stored; any other may come after the upload.
        raise error_answer(response, payload, instead_of="a file", unprocessed=is_rate_limit)
    uploaded = payload.get("data")
    file_id = uploaded.get("id") if isinstance(uploaded, dict) else None
    if not isinstance(file_id, str) or not file_id:
        raise UpstreamUnavailable(
            "Coze answered an upload without a file id",
            provider=PROVIDER,
            log_id=response.headers.get(LOG_ID_HEADER, ""),
        )
    return file_id
