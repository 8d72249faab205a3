"""The Coze bot chat service (chat v3, streamed): its request, the relay of its stream, the cancel of chats left open.

The chat request is built and sent here and its response closed here (``open_chat``), as the
workflow streams are; ``relay_chat`` feeds the stream's events to the rules of
``events.ChatTurn``. A submit_tool_outputs continuation streams the same events, so it is
opened with ``open_chat`` and relayed with ``relay_chat`` as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, ClassVar

import cozepy
import httpx

from providers.base import (
    ChatEvent,
    ChatInput,
    ChatService,
    Message,
    ParameterSpec,
    reject_unknown_parameters,
    string_map_parameter,
    string_parameter,
)
from providers.coze.clients import CANCEL_SECONDS, CozeClients, CozeService, drain
from providers.coze.errors import LOG_ID_HEADER, PROVIDER, map_coze_errors
from providers.coze.events import ChatTurn
from providers.errors import InvalidRequest, UpstreamConversationBusy, quote_input
from providers.http import body_chunks
from providers.sse import iter_sse

_LOGGER = logging.getLogger(__name__)


class CozeChatService(CozeService, ChatService):
    """A Coze bot, through chat v3 streaming."""

    provider: ClassVar[str] = PROVIDER

    def __init__(
        self,
        name: str,
        clients: CozeClients | None,
        *,
        default_bot_id: str = "",
        description: str = "",
        missing_key_reason: str = "COZE_API_TOKEN is not set",
    ) -> None:
        ChatService.__init__(
            self,
            name,
            description or "Coze bot chat (chat v3). Roles: user, assistant.",
            (
                ParameterSpec(
                    "bot_id",
                    "string",
                    f"the bot to chat with (default {default_bot_id})" if default_bot_id else "the bot to chat with",
                    required=not default_bot_id,
                ),
                ParameterSpec("custom_variables", "object", "the bot's custom variables (string values)"),
                ParameterSpec("meta_data", "object", "metadata kept with the chat (string values)"),
            ),
        )
        CozeService.__init__(self, clients, missing_key_reason)
        self._default_bot_id = default_bot_id
        # The parameters ListServices shows are the ones a request may send.
        self._parameter_names = frozenset(spec.name for spec in self.parameters)

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        clients = self._require_clients()
        body = self._chat_body(request)
        conversation_id = request.conversation_id
        # cozepy sends the parameter even without a conversation (empty: a new one); so does the gateway.
        sent = await clients.request("/v3/chat", body, params={"conversation_id": conversation_id or None})
        turn = ChatTurn()
        async with (
            open_chat(clients, sent, turn, conversation_id) as response,
            contextlib.aclosing(relay_chat(response, turn)) as events,
        ):
            async for event in events:
                yield event

    def _chat_body(self, request: ChatInput) -> dict[str, Any]:
        """The /v3/chat body for ``request`` (streamed), as cozepy's chat.stream() sends it; checks the parameters."""
        messages = _coze_messages(request.messages)
        parameters = request.parameters
        reject_unknown_parameters(parameters, self._parameter_names)
        bot_id = string_parameter(parameters, "bot_id", self._default_bot_id)
        if not bot_id:
            raise InvalidRequest("parameters.bot_id", "is required (no COZE_DEFAULT_BOT_ID is configured)")
        body: dict[str, Any] = {
            "bot_id": bot_id,
            # Coze keeps memory per user_id; a constant one would merge every caller's memory.
            "user_id": request.user_id or f"aiplatform-anonymous-{uuid.uuid4().hex}",
            "additional_messages": messages,
            "stream": True,
        }
        custom_variables = string_map_parameter(parameters, "custom_variables")
        if custom_variables is not None:
            body["custom_variables"] = custom_variables
        body["auto_save_history"] = True
        meta_data = string_map_parameter(parameters, "meta_data")
        if meta_data is not None:
            body["meta_data"] = meta_data
        return body


@contextlib.asynccontextmanager
async def open_chat(
    clients: CozeClients, request: httpx.Request, turn: ChatTurn, conversation_id: str
) -> AsyncIterator[httpx.Response]:
    """Send a streamed chat request and yield its event stream, closed when the block ends, however it ends.

    For /v3/chat and for the continuation of a chat (submit_tool_outputs with ``stream``): a
    4016 from this gateway's own previous turn of ``conversation_id`` is waited out once; the
    chat is cancelled at Coze unless ``turn`` saw Coze end it (``CancelUnlessEnded``); httpx's
    failures become the gateway's errors, with the stream's log id (``turn.log_id``).
    """
    with map_coze_errors(turn), CancelUnlessEnded(clients, conversation_id, turn) as cancel:
        response = await _send_once_conversation_is_free(clients, request, conversation_id)
        async with contextlib.aclosing(response):
            cancel.turn_opened()
            turn.log_id = response.headers.get(LOG_ID_HEADER, "")
            yield response


async def relay_chat(response: httpx.Response, turn: ChatTurn) -> AsyncGenerator[ChatEvent, None]:
    """Yield the provider events of an opened chat stream until Coze ends the turn.

    ``turn`` decides what each event means (``events.ChatTurn``); a body that ends before the
    turn did raises ``turn.cut()``. After the last event the rest of the body (``done``) is
    read for a moment, so the connection can be reused.
    """
    read = turn.read
    async with contextlib.aclosing(iter_sse(body_chunks(response))) as sse_events:
        async for sse in sse_events:
            for event in read(sse):
                yield event
            if turn.ended:
                await drain(sse_events)
                return
    raise turn.cut()


def _coze_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The caller's messages as /v3/chat's additional_messages, in cozepy's shape."""
    converted = []
    for index, message in enumerate(messages):
        if message.role == "user":
            converted.append(cozepy.Message.build_user_question_text(message.content).model_dump())
        elif message.role == "assistant":
            converted.append(cozepy.Message.build_assistant_answer(message.content).model_dump())
        else:
            raise InvalidRequest(
                f"messages[{index}].role",
                f"Coze does not take role {quote_input(message.role)} (only 'user' and 'assistant'; "
                "put instructions in the bot's persona)",
            )
    if messages[-1].role != "user":
        raise InvalidRequest(f"messages[{len(messages) - 1}].role", "the last message must be 'user'")
    return converted


async def _send_once_conversation_is_free(
    clients: CozeClients, request: httpx.Request, conversation_id: str
) -> httpx.Response:
    """Send the chat request, waiting once for this gateway's own previous turn of the conversation.

    Coze answers 4016 while the conversation's previous chat runs. When that chat is this
    gateway's own and is ending (its caller just left, its cancel is on the way), the new turn
    waits for it (at most CANCEL_SECONDS) and is sent once more: safe, since a 4016 answer
    means Coze started nothing. Otherwise the 4016 stands (ABORTED for the caller).
    """
    try:
        return await clients.send_stream(request)
    except UpstreamConversationBusy:
        if not conversation_id or not await clients.wait_for_turn(conversation_id, CANCEL_SECONDS):
            raise
    return await clients.send_stream(request)


class CancelUnlessEnded:
    """Cancels a Coze chat upstream when the call ends before Coze ended the chat, for any reason.

    The caller cancelled or its deadline passed (a CancelledError), the stream was closed
    early (GeneratorExit), the connection broke, a timeout fired, the gateway failed: Coze
    keeps working on a created chat, and billing it, until it is asked to cancel it, and the
    conversation stays busy (4016) meanwhile. A chat that completed, wants tool outputs or
    failed (``turn.ended``) has nothing to cancel, nor one whose ids were never known. The
    cancel runs in the background, so the caller's cancellation is neither delayed nor
    swallowed; the conversation's turn stays open until it lands (``CozeClients.open_turn``).
    """

    __slots__ = ("_clients", "_conversation_id", "_open", "_turn")

    def __init__(self, clients: CozeClients, conversation_id: str, turn: ChatTurn) -> None:
        self._clients = clients
        self._conversation_id = conversation_id  # the caller's; "" for a new conversation
        self._turn = turn
        self._open: asyncio.Event | None = None

    def turn_opened(self) -> None:
        """Coze accepted the chat: it runs in the caller's conversation until it ends."""
        if self._conversation_id:
            self._open = self._clients.open_turn(self._conversation_id)

    def __enter__(self) -> CancelUnlessEnded:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        clients, opened, turn = self._clients, self._open, self._turn
        if kind is None or turn.ended or not (turn.conversation_id and turn.chat_id):
            if opened is not None:
                clients.close_turn(self._conversation_id, opened)
            return
        chat_id = turn.chat_id
        try:
            task = clients.run_in_background(clients.cancel_chat(turn.conversation_id, chat_id))
        except RuntimeError:
            # No running loop (a generator finalised at interpreter exit): nothing can be sent.
            _LOGGER.warning("could not cancel Coze chat %s: no event loop is running", chat_id)
            return
        if opened is not None:
            task.add_done_callback(lambda _: clients.close_turn(self._conversation_id, opened))
