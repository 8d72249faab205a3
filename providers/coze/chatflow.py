"""The Coze chatflow service (/v1/workflows/chat): a workflow that holds a conversation, relayed as a chat.

A chatflow answers in chat v3's events, so its stream is opened and relayed with the bot chat's
``open_chat`` and ``relay_chat`` (cancel of a turn left open, never OK unless Coze ended the
turn, 4016 of the gateway's own previous turn waited out). ``ChatflowTurn`` adds the one rule
chat v3 lacks: a question node, which ends the turn with the question as the answer; the
conversation's next turn is the user's reply, and the run goes on from there.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

from providers.base import (
    ChatEvent,
    ChatFinished,
    ChatInput,
    ChatService,
    FinishReason,
    ParameterSpec,
    json_type_name,
    refuse_tools,
    reject_unknown_parameters,
    string_map_parameter,
    string_parameter,
)
from providers.coze.chat import check_messages, coze_messages, open_chat, relay_chat
from providers.coze.clients import CozeClients, CozeService
from providers.coze.events import ChatTurn, event_json, usage_of
from providers.errors import InvalidRequest
from providers.sse import ServerSentEvent

#: The provider name config files use for a chatflow service.
PROVIDER_NAME = "coze_chatflow"
_CHATFLOW_PATH = "/v1/workflows/chat"


class ChatflowTurn(ChatTurn):
    """One chatflow turn as its stream tells it: a chat turn, and a question node that ends it.

    Coze delivers a question node in one of two shapes (tests/fakes/coze.py cites both): its
    API reference (workflow_chat) shows the question as an answer message, then a verbose
    message ``{"msg_type": "interrupt"}`` and no ``conversation.chat.completed``; the
    open-source server (coze-studio) sends ``conversation.chat.requires_action`` without a
    ``required_action``. Either ends the turn normally (ChatFinished, STOP) with
    ``awaits_reply`` set: the run waits for the conversation's next turn. A chatflow takes no
    tool outputs (workflow_chat: "对话流中不支持提交端插件结果"), so requires_action never
    means tool calls here.
    """

    __slots__ = ("awaits_reply",)

    def __init__(self, *, conversation_id: str = "", chat_id: str = "", log_id: str = "") -> None:
        super().__init__(conversation_id=conversation_id, chat_id=chat_id, log_id=log_id)
        #: The turn ended at a question node: the run goes on with the conversation's next turn.
        self.awaits_reply = False

    def read(self, sse: ServerSentEvent) -> tuple[ChatEvent, ...]:
        kind = sse.event
        if kind == "conversation.message.completed":
            message = event_json(sse, self.log_id)
            if message.get("type") == "verbose" and is_interrupt(message.get("content")):
                return (self._waiting(message),)
        elif kind == "conversation.chat.requires_action":
            return (self._waiting(event_json(sse, self.log_id)),)
        return super().read(sse)

    def _waiting(self, data: Mapping[str, Any]) -> ChatFinished:
        self.ended = self.awaits_reply = True
        return ChatFinished(
            finish_reason=FinishReason.STOP,
            # A requires_action chat may carry usage; the verbose message does not.
            usage=usage_of(data.get("usage"), self.log_id) if "status" in data else None,
            conversation_id=self.conversation_id or str(data.get("conversation_id") or ""),
            chat_id=self.chat_id or str(data.get("chat_id") or data.get("id") or ""),
            awaiting_reply=True,
        )


def is_interrupt(content: object) -> bool:
    """Whether a verbose message's content is a chatflow's interrupt (``{"msg_type": "interrupt", ...}``)."""
    if not isinstance(content, str) or '"interrupt"' not in content:
        return False
    try:
        verbose = json.loads(content)
    except ValueError:
        return False
    return isinstance(verbose, dict) and verbose.get("msg_type") == "interrupt"


class CozeChatflowService(CozeService, ChatService):
    """A Coze chatflow, through /v1/workflows/chat streaming."""

    provider: ClassVar[str] = PROVIDER_NAME

    def __init__(
        self,
        name: str,
        clients: CozeClients | None,
        *,
        default_workflow_id: str = "",
        description: str = "",
        missing_key_reason: str = "COZE_API_TOKEN is not set",
    ) -> None:
        ChatService.__init__(
            self,
            name,
            description
            or "Coze chatflow (/v1/workflows/chat). Roles: user, assistant. A question node ends the turn "
            "with the question as the answer; reply in the next turn, with its conversation_id.",
            (
                ParameterSpec(
                    "workflow_id",
                    "string",
                    f"the chatflow to run (default {default_workflow_id})"
                    if default_workflow_id
                    else "the chatflow to run",
                    required=not default_workflow_id,
                ),
                ParameterSpec("app_id", "string", "the app the chatflow belongs to (set app_id or bot_id, not both)"),
                ParameterSpec("bot_id", "string", "the bot the chatflow is bound to (set app_id or bot_id, not both)"),
                ParameterSpec("parameters", "object", "the chatflow's input parameters (its start node's variables)"),
                ParameterSpec("workflow_version", "string", "the chatflow version to run (default: the latest)"),
                ParameterSpec("connector_id", "string", "the channel the run is counted under (e.g. 1024, the API)"),
                ParameterSpec(
                    "ext", "object", "extra fields (string values: latitude, longitude, user_id; user_id by default)"
                ),
            ),
        )
        CozeService.__init__(self, clients, missing_key_reason)
        self._default_workflow_id = default_workflow_id
        # The parameters ListServices shows are the ones a request may send.
        self._parameter_names = frozenset(spec.name for spec in self.parameters)

    def check_input(self, request: ChatInput) -> None:
        """Refuse what a chatflow cannot take (naming the field), before any upload or upstream call.

        Tools (a chatflow takes no tool outputs), roles but user and assistant, parts outside a
        user message, and parameters of the wrong type.
        """
        refuse_tools(request, self.name, "a Coze chatflow takes no tools (its plugins are nodes of the flow)")
        check_messages(request.messages, self.name)
        self.chatflow_options(request)

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        clients = self._require_clients()
        body = self.chatflow_options(request)
        body["additional_messages"] = await coze_messages(clients, request.messages)
        conversation_id = request.conversation_id
        sent = await clients.request(_CHATFLOW_PATH, body)
        turn = ChatflowTurn()
        async with (
            open_chat(clients, sent, turn, conversation_id) as response,
            contextlib.aclosing(relay_chat(response, turn)) as events,
        ):
            async for event in events:
                yield event

    def chatflow_options(self, request: ChatInput) -> dict[str, Any]:
        """The /v1/workflows/chat body for ``request`` but its messages, in cozepy's shape; checks the parameters."""
        parameters = request.parameters
        reject_unknown_parameters(parameters, self._parameter_names)
        workflow_id = string_parameter(parameters, "workflow_id", self._default_workflow_id)
        if not workflow_id:
            raise InvalidRequest("parameters.workflow_id", "is required (no COZE_DEFAULT_WORKFLOW_ID is configured)")
        app_id, bot_id = string_parameter(parameters, "app_id"), string_parameter(parameters, "bot_id")
        if bool(app_id) == bool(bot_id):
            # workflow_chat: one of them is required, "不支持同时指定 bot_id 和 app_id".
            raise InvalidRequest("parameters.app_id", "set exactly one of parameters.app_id and parameters.bot_id")
        body: dict[str, Any] = {"workflow_id": workflow_id}
        inputs = parameters.get("parameters")
        if inputs is not None:
            if not isinstance(inputs, dict):
                raise InvalidRequest("parameters.parameters", f"must be an object, got {json_type_name(inputs)}")
            body["parameters"] = inputs
        body["app_id" if app_id else "bot_id"] = app_id or bot_id
        if request.conversation_id:
            body["conversation_id"] = request.conversation_id
        ext = string_map_parameter(parameters, "ext") or {}
        if request.user_id:
            # Coze documents user_id as one of ext's fields; the caller's own ext.user_id wins.
            ext.setdefault("user_id", request.user_id)
        if ext:
            body["ext"] = ext
        for option in ("workflow_version", "connector_id"):
            value = string_parameter(parameters, option)
            if value:
                body[option] = value
        return body
