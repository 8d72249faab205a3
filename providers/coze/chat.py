"""The Coze bot chat service (chat v3, streamed): the chat request, its relay, the cancel of a chat left unfinished."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import cozepy
import httpx

from providers.base import (
    ChatEvent,
    ChatInput,
    ChatService,
    FinishReason,
    Message,
    ParameterSpec,
    ReasoningDelta,
    TextDelta,
    reject_unknown_parameters,
    string_map_parameter,
    string_parameter,
)
from providers.coze import events
from providers.coze.clients import CANCEL_SECONDS, CozeClients, CozeService
from providers.coze.errors import CONVERSATION_BUSY_CODE, LOG_ID_HEADER, PROVIDER, code_number, map_coze_errors
from providers.errors import InvalidRequest, UpstreamUnavailable, quote_input
from providers.http import UpstreamCall, body_chunks, upstream_call
from providers.sse import iter_sse

_LOGGER = logging.getLogger(__name__)

# How long to keep reading after chat.completed for the body to end, so the
# connection goes back to the pool; past it the connection is dropped instead.
DRAIN_SECONDS = 1.0


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

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        clients = self._require_clients()
        messages = _coze_messages(request.messages)
        reject_unknown_parameters(request.parameters, frozenset(spec.name for spec in self.parameters))
        bot_id = string_parameter(request.parameters, "bot_id", self._default_bot_id)
        if not bot_id:
            raise InvalidRequest("parameters.bot_id", "is required (no COZE_DEFAULT_BOT_ID is configured)")
        custom_variables = string_map_parameter(request.parameters, "custom_variables")
        meta_data = string_map_parameter(request.parameters, "meta_data")
        # Coze keeps memory per user_id; a constant one would merge every caller's memory.
        user_id = request.user_id or f"aiplatform-anonymous-{uuid.uuid4().hex}"

        async def create_chat() -> None:
            # cozepy's public chat.stream() would read the body itself; _create stops at the
            # headers, after raising CozeAPIError for a JSON error answer instead of a stream.
            await clients.coze.chat._create(
                bot_id=bot_id,
                user_id=user_id,
                stream=True,
                additional_messages=messages,
                conversation_id=request.conversation_id or None,
                custom_variables=custom_variables,
                meta_data=meta_data,
            )

        async with upstream_call() as call:
            with map_coze_errors(call), CancelUnlessEnded(clients, request.conversation_id) as chat_state:
                await _create_once_conversation_is_free(clients, request.conversation_id, create_chat)
                chat_state.turn_opened()
                response = _stream_response(call)
                streamed_message_ids: set[str] = set()
                follow_ups: list[str] = []
                async with contextlib.aclosing(iter_sse(body_chunks(response))) as sse_events:
                    async for sse in sse_events:
                        kind = sse.event
                        # Deltas are nearly every event: one JSON decode and a few dict lookups each. Only the
                        # chat's final event (usage, tool calls, error) goes through cozepy's pydantic model.
                        if kind == "conversation.message.delta":
                            delta = events.event_json(sse, call)
                            if delta.get("type") != "answer":
                                continue
                            streamed_message_ids.add(str(delta.get("id") or ""))
                            reasoning = delta.get("reasoning_content")
                            if reasoning and isinstance(reasoning, str):
                                yield ReasoningDelta(reasoning)
                            content = delta.get("content")
                            if content and isinstance(content, str):
                                yield TextDelta(content)
                        elif kind == "conversation.message.completed":
                            message = events.event_json(sse, call)
                            content = message.get("content")
                            if not content or not isinstance(content, str):
                                continue
                            message_type = message.get("type")
                            if message_type == "follow_up":
                                follow_ups.append(content)
                            elif message_type == "answer" and str(message.get("id") or "") not in streamed_message_ids:
                                # An answer that arrived whole, without deltas, is still part of the answer.
                                yield TextDelta(content)
                        elif kind == "conversation.chat.created":
                            created = events.event_json(sse, call)
                            chat_state.started(str(created.get("conversation_id") or ""), str(created.get("id") or ""))
                        elif kind == "conversation.chat.completed":
                            chat = events.chat(sse, call)
                            chat_state.ended = True
                            yield events.chat_finished(chat, FinishReason.STOP, follow_ups)
                            await drain(sse_events)
                            return
                        elif kind == "conversation.chat.requires_action":
                            chat = events.chat(sse, call)
                            chat_state.ended = True
                            calls = events.tool_calls(chat)
                            yield events.chat_finished(chat, FinishReason.TOOL_CALLS, follow_ups, calls)
                            await drain(sse_events)
                            return
                        elif kind == "conversation.chat.failed":
                            chat_state.ended = True
                            raise events.chat_failed(events.event_json(sse, call), call)
                        elif kind == "error":
                            raise events.error_event(sse.data, call)
                        # Everything else (in_progress, audio, done, unknown) is not answer text.
                raise UpstreamUnavailable(
                    "Coze stream ended before conversation.chat.completed",
                    provider=PROVIDER,
                    log_id=call.header(LOG_ID_HEADER),
                )


def _coze_messages(messages: tuple[Message, ...]) -> list[cozepy.Message]:
    converted = []
    for index, message in enumerate(messages):
        if message.role == "user":
            converted.append(cozepy.Message.build_user_question_text(message.content))
        elif message.role == "assistant":
            converted.append(cozepy.Message.build_assistant_answer(message.content))
        else:
            raise InvalidRequest(
                f"messages[{index}].role",
                f"Coze does not take role {quote_input(message.role)} (only 'user' and 'assistant'; "
                "put instructions in the bot's persona)",
            )
    if messages[-1].role != "user":
        raise InvalidRequest(f"messages[{len(messages) - 1}].role", "the last message must be 'user'")
    return converted


async def drain(sse_events: AsyncIterator[Any]) -> None:
    """Read to the end of the body (done, then EOF) so the connection can be reused."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in sse_events:
                pass


def _stream_response(call: UpstreamCall) -> httpx.Response:
    """The response cozepy just opened, recorded by the shared client's response hook."""
    if not call.responses:
        raise RuntimeError("the Coze response was not recorded: its client must use tracked_client_options()")
    return call.responses[-1]


async def _create_once_conversation_is_free(
    clients: CozeClients, conversation_id: str, create: Callable[[], Awaitable[None]]
) -> None:
    """Create the chat, waiting once for this gateway's own previous turn of the conversation.

    Coze answers 4016 while the conversation's previous chat runs. When that chat is this
    gateway's own and is ending (its caller just left, its cancel is on the way), the new turn
    waits for it (at most CANCEL_SECONDS) and is sent once more: safe, since a 4016 answer
    means Coze started nothing. Otherwise the 4016 stands (ABORTED for the caller).
    """
    try:
        await create()
    except cozepy.CozeAPIError as error:
        if code_number(error.code) != CONVERSATION_BUSY_CODE or not conversation_id:
            raise
        if not await clients.wait_for_turn(conversation_id, CANCEL_SECONDS):
            raise
        await create()


class CancelUnlessEnded:
    """Cancels a Coze chat upstream when the call ends before Coze ended the chat, for any reason.

    The caller cancelled or its deadline passed (a CancelledError), the stream was closed
    early (GeneratorExit), the connection broke, a timeout fired, the gateway failed: Coze
    keeps working on a created chat, and billing it, until it is asked to cancel it, and the
    conversation stays busy (4016) meanwhile. A chat that completed, wants tool outputs or
    failed has nothing to cancel. The cancel runs in the background, so the caller's
    cancellation is neither delayed nor swallowed; the conversation's turn stays open until
    it lands (``CozeClients.open_turn``).
    """

    __slots__ = ("_clients", "_conversation_id", "_ids", "_turn", "ended")

    def __init__(self, clients: CozeClients, conversation_id: str) -> None:
        self._clients = clients
        self._conversation_id = conversation_id  # the caller's; "" for a new conversation
        self._turn: asyncio.Event | None = None
        self._ids: tuple[str, str] | None = None  # (conversation_id, chat_id), known from chat.created
        self.ended = False

    def turn_opened(self) -> None:
        """Coze accepted the chat: it runs in the caller's conversation until it ends."""
        if self._conversation_id:
            self._turn = self._clients.open_turn(self._conversation_id)

    def started(self, conversation_id: str, chat_id: str) -> None:
        """Remember the chat's ids (from conversation.chat.created)."""
        if conversation_id and chat_id:
            self._ids = (conversation_id, chat_id)

    def __enter__(self) -> CancelUnlessEnded:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        turn = self._turn
        if kind is None or self._ids is None or self.ended:
            if turn is not None:
                self._clients.close_turn(self._conversation_id, turn)
            return
        conversation_id, chat_id = self._ids
        try:
            task = self._clients.run_in_background(self._clients.cancel_chat(conversation_id, chat_id))
        except RuntimeError:
            # No running loop (a generator finalised at interpreter exit): nothing can be sent.
            _LOGGER.warning("could not cancel Coze chat %s: no event loop is running", chat_id)
            return
        if turn is not None:
            task.add_done_callback(lambda _: self._clients.close_turn(self._conversation_id, turn))
