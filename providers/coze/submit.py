"""Answering a Coze bot's tool calls: the rules of a continuation request, and its submit_tool_outputs request.

A bot whose plugin runs on the caller's side ends its turn with ``requires_action`` (the
gateway's FINISH_REASON_TOOL_CALLS, with the calls, ``conversation_id`` and ``chat_id``). The
caller runs the tools and chats again with one ``tool`` message per call, the same
``conversation_id`` and that ``chat_id``; the gateway submits the outputs with
``/v3/chat/submit_tool_outputs`` (streamed) and relays the continuation as any chat
(``chat.CozeChatService.stream_chat``: the same opening, relay and cancel), which may ask for
tools again.

Coze keeps the conversation's history, the calls included, server-side, and the submit takes
nothing but the outputs: a continuation request carries only the ``tool`` messages, and an
assistant message's ``tool_calls`` are refused rather than dropped in silence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from providers.base import ChatInput, Message
from providers.coze.clients import CozeClients
from providers.coze.events import ChatTurn
from providers.errors import InvalidRequest

SUBMIT_PATH = "/v3/chat/submit_tool_outputs"


def first_tool_message(messages: Sequence[Message]) -> int:
    """Where the trailing ``tool`` messages begin: ``len(messages)`` when there are none."""
    start = len(messages)
    while start > 0 and messages[start - 1].role == "tool":
        start -= 1
    return start


def check_continuation(request: ChatInput) -> bool:
    """Whether ``request`` answers a chat's tool calls; refuses (InvalidRequest, naming the field) a malformed one.

    The ``tool`` messages come last and alone, with ``conversation_id`` and ``chat_id``; an
    assistant message's ``tool_calls`` (history Coze keeps itself) are refused anywhere.
    """
    messages = request.messages
    start = first_tool_message(messages)
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        if message.tool_calls:
            raise InvalidRequest(
                f"{field}.tool_calls",
                "Coze keeps the conversation's history, tool calls included, server-side: send only the "
                "'tool' messages that answer them, with conversation_id and chat_id",
            )
        if message.role == "tool" and index < start:
            raise InvalidRequest(f"{field}.role", "'tool' messages answer the chat's tool calls and come last")
        if message.role == "tool" and message.parts:
            raise InvalidRequest(f"{field}.parts", "a tool's output is text: send it as content")
    if start == len(messages):
        if request.chat_id:
            raise InvalidRequest(
                "chat_id", "names the chat whose tool calls 'tool' messages answer: send it with them only"
            )
        return False
    if start > 0:
        raise InvalidRequest(
            f"messages[{start - 1}]",
            "a request that answers tool calls sends only the 'tool' messages: Coze keeps the rest of the "
            "conversation server-side",
        )
    if not request.conversation_id:
        raise InvalidRequest(
            "conversation_id", "is required with 'tool' messages: the conversation of the chat that asked for them"
        )
    if not request.chat_id:
        raise InvalidRequest(
            "chat_id", "is required with 'tool' messages: the chat_id of the turn that ended with the tool calls"
        )
    return True


async def submit_request(clients: CozeClients, request: ChatInput) -> httpx.Request:
    """The streamed /v3/chat/submit_tool_outputs request of a continuation (``check_continuation`` passed)."""
    body: dict[str, Any] = {
        "tool_outputs": [
            {"tool_call_id": message.tool_call_id, "output": message.content} for message in request.messages
        ],
        "stream": True,
    }
    params: dict[str, str | None] = {"conversation_id": request.conversation_id, "chat_id": request.chat_id}
    return await clients.request(SUBMIT_PATH, body, params=params)


def continuation_turn(request: ChatInput) -> ChatTurn:
    """The turn that reads a continuation: the chat it continues is known before any event (so it can be cancelled)."""
    return ChatTurn(conversation_id=request.conversation_id, chat_id=request.chat_id)
