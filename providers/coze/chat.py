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
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cozepy
import httpx

from providers.base import (
    ChatEvent,
    ChatInput,
    ChatService,
    Message,
    ParameterSpec,
    json_type_name,
    reject_unknown_parameters,
    string_map_parameter,
    string_parameter,
)
from providers.coze.clients import CANCEL_SECONDS, CozeClients, CozeService, drain
from providers.coze.errors import LOG_ID_HEADER, PROVIDER, map_coze_errors
from providers.coze.events import ChatTurn
from providers.coze.parts import check_parts, user_message
from providers.coze.submit import check_continuation, continuation_turn, submit_request
from providers.errors import InvalidRequest, UpstreamConversationBusy, input_name, quote_input
from providers.http import body_chunks
from providers.sse import iter_sse

_LOGGER = logging.getLogger(__name__)


# Coze runs a bot's tools itself (its plugins, configured in Coze), so a caller's tools have no place.
_TOOLS_ARE_PLUGINS = (
    "a Coze bot's tools are its plugins, configured on the bot in Coze; answer the tool calls it ends a "
    "turn with by 'tool' messages with conversation_id and chat_id"
)


@dataclass(frozen=True, slots=True)
class _Option(ParameterSpec):
    """A key of ``parameters``: what ListServices shows, and the check that turns a request's value into Coze's."""

    check: Callable[[str, object], object] = field(default=lambda name, value: value, repr=False, compare=False)


def _string(name: str, value: object) -> str:
    return string_parameter({name: value}, name)


def _boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"parameters.{name}", f"must be a boolean, got {json_type_name(value)}")
    return value


def _object(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"parameters.{name}", f"must be an object, got {json_type_name(value)}")
    return value


def _string_map(name: str, value: object) -> dict[str, str]:
    checked = string_map_parameter({name: value}, name)
    assert checked is not None  # value is not None here
    return checked


def _shortcut_command(name: str, value: object) -> dict[str, Any]:
    # DOC-CHAT's ShortcutCommandDetail: command_id (string, required), parameters (string values).
    command = _object(name, value)
    for key in command:
        if key not in ("command_id", "parameters"):
            raise InvalidRequest(
                f"parameters.{name}.{input_name(key)}", "unknown key (a shortcut command takes command_id, parameters)"
            )
    if not isinstance(command.get("command_id"), str) or not command["command_id"]:
        raise InvalidRequest(
            f"parameters.{name}.command_id",
            f"is required, a string (got {json_type_name(command.get('command_id'))})",
        )
    if command.get("parameters") is not None:
        _string_map(f"{name}.parameters", command["parameters"])
    return command


# The one declaration of the chat options a request may set in ``parameters``: ListServices lists
# them with their types, requests are checked and sent by them (each one a /v3/chat body field of
# the same name, DOC-CHAT), so the two cannot drift.
_OPTIONS = (
    _Option("custom_variables", "object", "the bot's custom variables (string values)", check=_string_map),
    _Option("meta_data", "object", "metadata kept with the chat (string values)", check=_string_map),
    _Option(
        "auto_save_history",
        "boolean",
        "whether Coze keeps this turn in the conversation (default true); a turn it does not keep cannot "
        "take tool outputs",
        check=_boolean,
    ),
    _Option(
        "extra_params",
        "object",
        "extra parameters for the bot (string values), e.g. latitude and longitude",
        check=_string_map,
    ),
    _Option(
        "shortcut_command",
        "object",
        'a shortcut command to run: {"command_id": string, "parameters": {name: string}}',
        check=_shortcut_command,
    ),
    _Option("parameters", "object", "a chatflow-mode bot's input parameters (any JSON values)", check=_object),
)


def _parameters(default_bot_id: str) -> tuple[_Option, ...]:
    """The parameters of a bot service whose default bot is ``default_bot_id`` ("" for none)."""
    bot = f"the bot to chat with (default {default_bot_id})" if default_bot_id else "the bot to chat with"
    return (_Option("bot_id", "string", bot, required=not default_bot_id, check=_string), *_OPTIONS)


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
        parameters = _parameters(default_bot_id)
        ChatService.__init__(
            self,
            name,
            description
            or "Coze bot chat (chat v3). Roles: user, assistant, and tool (the outputs of the tool calls a turn "
            "ended with, sent alone with conversation_id and chat_id). Takes images and files in a user "
            "message's parts.",
            parameters,
        )
        CozeService.__init__(self, clients, missing_key_reason)
        self._default_bot_id = default_bot_id
        # The parameters ListServices shows are the ones a request may send, checked by the same list.
        self._options = parameters
        self._parameter_names = frozenset(option.name for option in parameters)

    def check_input(self, request: ChatInput) -> None:
        """Refuse what a Coze bot cannot take (naming the field), before any upload or upstream call.

        Tools (a bot's are its plugins), tool calls in the history, misplaced tool messages,
        parts outside a user message, and parameters of the wrong type.
        """
        if request.tools:
            raise InvalidRequest("tools", _TOOLS_ARE_PLUGINS)
        if request.tool_choice:
            raise InvalidRequest("tool_choice", _TOOLS_ARE_PLUGINS)
        self._checked_options(request.parameters)
        if not check_continuation(request):
            check_messages(request.messages, self.name)

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        clients = self._require_clients()
        self.check_input(request)
        conversation_id = request.conversation_id
        if request.messages[-1].role == "tool":
            # A continuation: the chat's ids are known before it streams.
            sent = await submit_request(clients, request)
            turn = continuation_turn(request)
        else:
            body = await self._chat_body(clients, request)
            # cozepy sends the parameter even without a conversation (empty: a new one); so does the gateway.
            sent = await clients.request("/v3/chat", body, params={"conversation_id": conversation_id or None})
            turn = ChatTurn()
        async with (
            open_chat(clients, sent, turn, conversation_id) as response,
            contextlib.aclosing(relay_chat(response, turn)) as events,
        ):
            async for event in events:
                yield event

    def _checked_options(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """The options ``parameters`` sets, as Coze takes them; refuses unknown keys and wrong types."""
        reject_unknown_parameters(parameters, self._parameter_names)
        options: dict[str, Any] = {}
        for option in self._options:
            value = parameters.get(option.name)
            if value is not None:
                options[option.name] = option.check(option.name, value)
        return options

    async def _chat_body(self, clients: CozeClients, request: ChatInput) -> dict[str, Any]:
        """The /v3/chat body for ``request`` (streamed), as cozepy's chat.stream() sends it; uploads parts' bytes."""
        options = self._checked_options(request.parameters)
        bot_id = options.pop("bot_id", self._default_bot_id)
        if not bot_id:
            raise InvalidRequest("parameters.bot_id", "is required (no COZE_DEFAULT_BOT_ID is configured)")
        body: dict[str, Any] = {
            "bot_id": bot_id,
            # Coze keeps memory per user_id; a constant one would merge every caller's memory.
            "user_id": request.user_id or f"aiplatform-anonymous-{uuid.uuid4().hex}",
            "additional_messages": await coze_messages(clients, request.messages),
            "stream": True,
            # cozepy always sends it (true by default). Coze refuses false only with stream=false
            # (4007), and the gateway always streams (its unary Chat is the joined stream).
            "auto_save_history": options.pop("auto_save_history", True),
        }
        body.update(options)
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


def check_messages(messages: tuple[Message, ...], service: str) -> None:
    """Refuse messages /v3/chat cannot take (naming the field): roles but user and assistant, misplaced parts."""
    for index, message in enumerate(messages):
        if message.role not in ("user", "assistant"):
            raise InvalidRequest(
                f"messages[{index}].role",
                f"Coze does not take role {quote_input(message.role)} (only 'user' and 'assistant', and "
                "'tool' to answer tool calls; put instructions in the bot's persona)",
            )
        check_parts(message, f"messages[{index}]", service)
    if messages[-1].role != "user":
        raise InvalidRequest(f"messages[{len(messages) - 1}].role", "the last message must be 'user'")


async def coze_messages(clients: CozeClients, messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The caller's messages (``check_messages`` passed) as additional_messages, in cozepy's shape; uploads bytes."""
    converted = []
    for message in messages:
        if message.parts:
            converted.append(await user_message(clients, message.parts))
        else:
            converted.append(_text_message(message))
    return converted


def _coze_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Text messages as additional_messages, checked (a chatflow's: its service takes no parts)."""
    check_messages(messages, "")
    return [_text_message(message) for message in messages]


def _text_message(message: Message) -> dict[str, Any]:
    if message.role == "user":
        return cozepy.Message.build_user_question_text(message.content).model_dump()
    return cozepy.Message.build_assistant_answer(message.content).model_dump()


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
    failed (``turn.ended``) has nothing to cancel, nor one Coze did not accept or whose ids were never known. The
    cancel runs in the background, so the caller's cancellation is neither delayed nor
    swallowed; the conversation's turn stays open until it lands (``CozeClients.open_turn``).
    """

    __slots__ = ("_accepted", "_clients", "_conversation_id", "_open", "_turn")

    def __init__(self, clients: CozeClients, conversation_id: str, turn: ChatTurn) -> None:
        self._clients = clients
        self._conversation_id = conversation_id  # the caller's; "" for a new conversation
        self._turn = turn
        self._open: asyncio.Event | None = None
        # A continuation's ids are known before it is sent; a submit Coze refused must not
        # cancel the chat, which still waits for its tool outputs.
        self._accepted = False

    def turn_opened(self) -> None:
        """Coze accepted the chat: it runs in the caller's conversation until it ends."""
        self._accepted = True
        if self._conversation_id:
            self._open = self._clients.open_turn(self._conversation_id)

    def __enter__(self) -> CancelUnlessEnded:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        clients, opened, turn = self._clients, self._open, self._turn
        if kind is None or turn.ended or not (self._accepted and turn.conversation_id and turn.chat_id):
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
