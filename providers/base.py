"""The provider interface: what a service is, what it takes and what it yields.

Providers take plain Python values and yield small provider-neutral events; only
the servicer turns them into protobuf messages, so providers can be tested
without a gRPC server and the API can grow without touching them.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from providers.errors import InvalidRequest, input_name

# --- what callers send -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextPart:
    """A piece of a message's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image: exactly one of ``url``, ``file_id`` (the provider's) or ``data`` (with ``mime_type``)."""

    url: str = ""
    data: bytes = field(default=b"", repr=False)
    mime_type: str = ""
    file_id: str = ""


@dataclass(frozen=True, slots=True)
class FilePart:
    """A file: exactly one of ``url``, ``file_id`` (the provider's) or ``data`` (with ``name`` and ``mime_type``)."""

    url: str = ""
    file_id: str = ""
    data: bytes = field(default=b"", repr=False)
    name: str = ""
    mime_type: str = ""


ContentPart = TextPart | ImagePart | FilePart


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool the model wants called before it can answer; ``arguments`` is JSON text."""

    id: str
    type: str = "function"
    function_name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation.

    ``role`` is "user", "assistant", "system" or "tool". An assistant turn may carry the
    ``tool_calls`` it made; a "tool" message is the output (``content``) of the call
    ``tool_call_id``. When ``parts`` is set it replaces ``content``.
    """

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    parts: tuple[ContentPart, ...] = ()


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is the JSON Schema of its arguments."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatInput:
    """One chat turn as the servicer hands it to a chat service.

    ``tools`` and ``tool_choice`` ("", "auto", "none", "required" or a tool's name) offer the
    model functions; ``chat_id`` names the turn whose tool calls trailing "tool" messages answer.
    """

    messages: tuple[Message, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    user_id: str = ""
    conversation_id: str = ""
    tools: tuple[Tool, ...] = ()
    tool_choice: str = ""
    chat_id: str = ""


@dataclass(frozen=True, slots=True)
class WorkflowInput:
    """One workflow run as the servicer hands it to a workflow service."""

    workflow_id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    bot_id: str = ""
    app_id: str = ""
    #: Run options beside the workflow's own inputs: a version, a channel, extra fields ("" / empty: none).
    workflow_version: str = ""
    connector_id: str = ""
    ext: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkflowResume:
    """The caller's answer to a workflow interrupt, as the servicer hands it to a workflow service."""

    event_id: str
    resume_data: str
    interrupt_type: int = 0
    workflow_id: str = ""


# --- what services yield ----------------------------------------------------------------------


class FinishReason(enum.Enum):
    """Why an answer ended (mirrors the API's FinishReason)."""

    UNSPECIFIED = 0
    STOP = 1
    LENGTH = 2
    CONTENT_FILTER = 3
    TOOL_CALLS = 4


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the upstream reported them."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of answer text."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """The next piece of the model's reasoning."""

    text: str


@dataclass(frozen=True, slots=True)
class ChatFinished:
    """The upstream finished the turn normally; always the last event of a chat stream.

    ``tool_calls`` is set when ``finish_reason`` is TOOL_CALLS; ``follow_ups`` are
    questions the bot suggests asking next, never part of the answer.
    """

    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage | None = None
    conversation_id: str = ""
    chat_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    follow_ups: tuple[str, ...] = ()
    #: The turn ended at a question the upstream waits to have answered in the next turn.
    awaiting_reply: bool = False


ChatEvent = TextDelta | ReasoningDelta | ChatFinished


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A whole chat turn."""

    content: str
    reasoning: str = ""
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage | None = None
    conversation_id: str = ""
    chat_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    follow_ups: tuple[str, ...] = ()
    #: The turn ended at a question the upstream waits to have answered in the next turn.
    awaiting_reply: bool = False


@dataclass(frozen=True, slots=True)
class WorkflowInterrupt:
    """The workflow waits for input; resume it with ``event_id``."""

    event_id: str
    interrupt_type: int
    data: str = ""
    #: What the workflow needs to go on, as the provider describes it (any JSON value), when it says.
    required_parameters: Any = None


@dataclass(frozen=True, slots=True)
class WorkflowNodeEvent:
    """Output of one workflow node, or an interrupt when ``interrupt`` is set."""

    content: str = ""
    node_title: str = ""
    node_seq_id: str = ""
    node_is_finish: bool = False
    node_id: str = ""
    usage: Usage | None = None
    interrupt: WorkflowInterrupt | None = None
    #: The run's id and its trace's link, on the events that carry them.
    execute_id: str = ""
    debug_url: str = ""


@dataclass(frozen=True, slots=True)
class WorkflowResult:
    """A whole workflow run."""

    output: str
    execute_id: str = ""
    debug_url: str = ""
    usage: Usage | None = None
    interrupt: WorkflowInterrupt | None = None


# --- the services -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    """One key a service takes in ``parameters``, as ListServices shows it."""

    name: str
    type: str
    description: str = ""
    required: bool = False


class AIService(ABC):
    """One configured service that callers address by ``name`` (the seed's ``AIServiceBase``)."""

    #: The kind of RPCs the service takes: "chat" or "workflow".
    service_type: ClassVar[str]
    #: The provider that implements it, e.g. "coze".
    provider: ClassVar[str]
    #: True when the service yields output as the upstream produces it.
    streaming: ClassVar[bool] = True
    #: The request fields beside ``parameters`` the service reads (ListServices shows them).
    request_fields: ClassVar[tuple[ParameterSpec, ...]] = ()

    def __init__(self, name: str, description: str, parameters: tuple[ParameterSpec, ...] = ()) -> None:
        self.name = name
        self.description = description
        #: The keys the service takes in ``parameters`` (for workflows: the inputs, when known).
        self.parameters = parameters

    def not_ready_reason(self) -> str:
        """Why the service cannot serve calls now; empty when it can."""
        return ""

    def secrets(self) -> tuple[str, ...]:
        """The credentials the service holds (tokens, keys): scrubbed from every status and log line."""
        return ()

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most services own nothing
        """Release what the service owns (HTTP clients); called once at shutdown."""


class ChatService(AIService):
    """A service that answers chat turns."""

    service_type: ClassVar[str] = "chat"

    def check_input(self, request: ChatInput) -> None:
        """Refuse (InvalidRequest, naming the field) what this service cannot take; called before ``stream_chat``.

        By default a service takes text only: no tools, no tool messages, no parts. A provider
        that takes more overrides this.
        """
        refuse_tools(request, self.name)
        refuse_parts(request, self.name)

    @abstractmethod
    def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        """Yield the answer as it is generated, ending with exactly one ChatFinished.

        Raises GatewayError subclasses; must close the upstream call when the
        iterator is closed or cancelled early.
        """

    async def chat(self, request: ChatInput) -> ChatResult:
        """Answer a whole turn; by default the joined stream (no polling)."""
        content: list[str] = []
        reasoning: list[str] = []
        finished = ChatFinished()
        stream = self.stream_chat(request)
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    content.append(event.text)
                elif isinstance(event, ReasoningDelta):
                    reasoning.append(event.text)
                else:
                    finished = event
        finally:
            await stream.aclose()
        return ChatResult(
            content="".join(content),
            reasoning="".join(reasoning),
            finish_reason=finished.finish_reason,
            usage=finished.usage,
            conversation_id=finished.conversation_id,
            chat_id=finished.chat_id,
            tool_calls=finished.tool_calls,
            follow_ups=finished.follow_ups,
            awaiting_reply=finished.awaiting_reply,
        )


class WorkflowService(AIService):
    """A service that runs workflows."""

    service_type: ClassVar[str] = "workflow"

    @abstractmethod
    async def run_workflow(self, request: WorkflowInput) -> WorkflowResult:
        """Run the workflow to its end (or its first interrupt) and return its output."""

    @abstractmethod
    def stream_workflow(self, request: WorkflowInput) -> AsyncGenerator[WorkflowNodeEvent, None]:
        """Yield the workflow's events as they happen; raise when it fails."""

    async def resume_workflow(self, request: WorkflowResume) -> AsyncGenerator[WorkflowNodeEvent, None]:
        """Answer an interrupt and yield the rest of the workflow's events, as stream_workflow does.

        By default the service cannot resume: the caller chose a service without
        interrupts, so the request is invalid (INVALID_ARGUMENT on ``service_name``,
        as for a chat RPC on a workflow service) rather than an upstream refusal.
        """
        raise InvalidRequest("service_name", f"{self.name!r} cannot resume workflows (it never interrupts)")
        yield  # an async generator like the implementations, so the error surfaces on first iteration


# --- helpers shared by providers --------------------------------------------------------------


def refuse_tools(request: ChatInput, service: str, why: str = "") -> None:
    """Raise InvalidRequest for the first tool-calling field ``request`` uses."""
    because = why or f"the service {service!r} does not take tools"
    if request.tools:
        raise InvalidRequest("tools", because)
    if request.tool_choice:
        raise InvalidRequest("tool_choice", because)
    for index, message in enumerate(request.messages):
        if message.tool_calls:
            raise InvalidRequest(f"messages[{index}].tool_calls", because)
        if message.role == "tool":
            raise InvalidRequest(f"messages[{index}].role", because)


def refuse_parts(request: ChatInput, service: str) -> None:
    """Raise InvalidRequest for the first message part: the service takes text content only."""
    for index, message in enumerate(request.messages):
        if message.parts:
            raise InvalidRequest(
                f"messages[{index}].parts", f"the service {service!r} takes text only: send the message as content"
            )


def reject_unknown_parameters(parameters: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Raise InvalidRequest naming the first parameter the provider does not take."""
    for key in parameters:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise InvalidRequest(f"parameters.{input_name(key)}", f"unknown parameter (this service takes: {known})")


def string_parameter(parameters: Mapping[str, Any], key: str, default: str = "") -> str:
    """Read an id-like parameter that must be a string (numbers lose digits in a Struct)."""
    value = parameters.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequest(
            f"parameters.{key}",
            f"must be a string, got {json_type_name(value)} "
            "(ids travel as strings: 19-digit ids lose digits as numbers)",
        )
    return value


def int_parameter(parameters: Mapping[str, Any], key: str, default: int, *, minimum: int, maximum: int) -> int:
    """Read an integer parameter; Struct numbers arrive as integral ints already."""
    value = parameters.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"parameters.{key}", f"must be an integer, got {json_type_name(value)}")
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"parameters.{key}", f"must be between {minimum} and {maximum}, got {value}")
    return value


def string_map_parameter(parameters: Mapping[str, Any], key: str) -> dict[str, str] | None:
    """Read an object parameter whose values must all be strings."""
    value = parameters.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"parameters.{key}", f"must be an object of strings, got {json_type_name(value)}")
    for item_key, item in value.items():
        if not isinstance(item, str):
            raise InvalidRequest(
                f"parameters.{key}.{input_name(item_key)}", f"must be a string, got {json_type_name(item)}"
            )
    return dict(value)


def json_type_name(value: object) -> str:
    """How a parameter's JSON type reads in an error message: "a number", "a list", ..."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"
