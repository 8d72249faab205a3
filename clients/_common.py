"""What the sync and async clients share: request building, error conversion, call and channel options."""

from __future__ import annotations

import contextlib
import enum
import importlib.resources
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import descriptor_pool, message_factory, struct_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from aiplatform.v1 import aiplatform_pb2 as pb

_LOGGER = logging.getLogger(__name__)

#: A chat message: a dict of ChatMessage's fields (``{"role": ..., "content": ...}``; ``tool_calls`` as a
#: response gave them, ``tool_call_id``, ``parts`` as dicts such as ``{"image": {"url": ...}}``), a
#: ``(role, content)`` tuple, or a ``pb.ChatMessage``.
MessageLike: TypeAlias = Mapping[str, Any] | tuple[str, str] | pb.ChatMessage
#: A tool: ``{"name": ..., "description": ..., "parameters": {JSON Schema}}``, OpenAI's
#: ``{"type": "function", "function": {...}}`` of the same, or a ``pb.Tool``.
ToolLike: TypeAlias = Mapping[str, Any] | pb.Tool
#: Request metadata: ``(key, value)`` pairs; keys are lower case, values ending in ``-bin`` are bytes.
Metadata: TypeAlias = Sequence[tuple[str, str | bytes]]
#: Called with each streamed message, its text, and the text so far (async clients also await a result).
ChatCallback: TypeAlias = Callable[[pb.StreamChatResponse, str, str], object]
#: Called with each workflow event, its ``content``, and the contents so far.
WorkflowCallback: TypeAlias = Callable[[pb.StreamWorkflowResponse, str, str], object]
#: Called with each event of a resumed workflow, its ``content``, and the contents so far.
ResumeWorkflowCallback: TypeAlias = Callable[[pb.ResumeWorkflowResponse, str, str], object]

_ChatRequestT = TypeVar("_ChatRequestT", pb.ChatRequest, pb.StreamChatRequest)
_WorkflowRequestT = TypeVar("_WorkflowRequestT", pb.RunWorkflowRequest, pb.StreamWorkflowRequest)
#: A message of a server stream whose text the clients join (see ``chunk_text``).
StreamedT = TypeVar("StreamedT", pb.StreamChatResponse, pb.StreamWorkflowResponse, pb.ResumeWorkflowResponse)

# Struct keeps numbers as doubles: every integer up to 2**53 - 1 is exact, and past it some change
# (2**53 + 1 arrives as 2**53; 19-digit Coze ids lose digits). The gateway refuses the same range.
_MAX_EXACT_INTEGER = 2**53 - 1
# The gateway refuses parameters nested deeper than this (objects and lists, parameters itself being
# level 1): MAX_PARAMETER_DEPTH in server/convert.py, which the clients, shipped alone, do not import.
_MAX_PARAMETER_DEPTH = 32
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class _Unset(enum.Enum):
    UNSET = enum.auto()


#: Marks a keyword argument the caller left out (``timeout=None`` means "no deadline").
UNSET = _Unset.UNSET
Timeout: TypeAlias = float | _Unset | None


class AIPlatformError(Exception):
    """A call failed: the gRPC status code and message, with the gateway's google.rpc details."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[Message] = ()) -> None:
        super().__init__(code, message, tuple(details))
        self.code = code
        self.message = message
        #: The unpacked google.rpc details (ErrorInfo, BadRequest, RetryInfo, ...); unknown types stay ``Any``.
        self.details: tuple[Message, ...] = tuple(details)
        self.error_info: error_details_pb2.ErrorInfo | None = next(
            (detail for detail in self.details if isinstance(detail, error_details_pb2.ErrorInfo)), None
        )

    @property
    def reason(self) -> str:
        """The gateway's UPPER_SNAKE reason (``ErrorInfo.reason``), e.g. "INVALID_REQUEST"; empty if none."""
        return str(self.error_info.reason) if self.error_info is not None else ""

    @property
    def domain(self) -> str:
        """``ErrorInfo.domain`` ("aiplatform.v1" for the gateway's own errors); empty if none."""
        return str(self.error_info.domain) if self.error_info is not None else ""

    @property
    def error_metadata(self) -> dict[str, str]:
        """``ErrorInfo.metadata``: provider, upstream_code, log_id, error_id when the gateway knows them."""
        return dict(self.error_info.metadata) if self.error_info is not None else {}

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


def error_from_rpc(error: grpc.RpcError) -> AIPlatformError:
    """The AIPlatformError for a failed call (sync or grpc.aio)."""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return AIPlatformError(grpc.StatusCode.UNKNOWN, str(error))
    status = _rich_status(error)
    details = _unpack(status.details) if status is not None else ()
    return AIPlatformError(error.code(), error.details() or "", details)


@contextlib.contextmanager
def map_rpc_errors() -> Iterator[None]:
    """Raise any grpc.RpcError from the block as AIPlatformError."""
    try:
        yield
    except grpc.RpcError as error:
        raise error_from_rpc(error) from error


def _rich_status(error: grpc.Call | grpc.aio.AioRpcError) -> status_pb2.Status | None:
    try:
        if isinstance(error, grpc.aio.AioRpcError):
            # rpc_status.aio.from_call wants a live aio call; the error only has its trailers.
            for key, value in error.trailing_metadata() or ():
                if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
                    return status_pb2.Status.FromString(value)
            return None
        status: status_pb2.Status | None = rpc_status.from_call(error)
        return status
    except (ValueError, DecodeError):
        # Details that do not parse or disagree with the status: the code and message still stand.
        _LOGGER.debug("ignoring unusable %s trailer", _STATUS_DETAILS_KEY, exc_info=True)
        return None


def _unpack(packed: Iterable[Any]) -> tuple[Message, ...]:
    details = []
    for detail in packed:
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(detail.TypeName())
        except KeyError:
            details.append(detail)
            continue
        message = message_factory.GetMessageClass(descriptor)()
        detail.Unpack(message)
        details.append(message)
    return tuple(details)


# --- requests ---------------------------------------------------------------------------------


def chat_request(
    request_type: type[_ChatRequestT],
    service_name: str,
    messages: Iterable[MessageLike],
    parameters: Mapping[str, Any] | None,
    user_id: str,
    conversation_id: str,
    tools: Iterable[ToolLike] | None = None,
    tool_choice: str = "",
    chat_id: str = "",
) -> _ChatRequestT:
    """A ChatRequest or StreamChatRequest from the clients' plain arguments."""
    return request_type(
        service_name=service_name,
        messages=to_messages(messages),
        parameters=to_struct(parameters),
        user_id=user_id,
        conversation_id=conversation_id,
        tools=to_tools(tools or ()),
        tool_choice=tool_choice,
        chat_id=chat_id,
    )


def workflow_request(
    request_type: type[_WorkflowRequestT],
    service_name: str,
    parameters: Mapping[str, Any] | None,
    workflow_id: str,
    bot_id: str,
    app_id: str,
) -> _WorkflowRequestT:
    """A RunWorkflowRequest or StreamWorkflowRequest from the clients' plain arguments."""
    return request_type(
        service_name=service_name,
        workflow_id=workflow_id,
        parameters=to_struct(parameters),
        bot_id=bot_id,
        app_id=app_id,
    )


def resume_request(
    service_name: str, workflow_id: str, event_id: str, resume_data: str, interrupt_type: int
) -> pb.ResumeWorkflowRequest:
    """A ResumeWorkflowRequest from the clients' plain arguments."""
    return pb.ResumeWorkflowRequest(
        service_name=service_name,
        workflow_id=workflow_id,
        event_id=event_id,
        resume_data=resume_data,
        interrupt_type=interrupt_type,
    )


def to_messages(messages: Iterable[MessageLike]) -> list[pb.ChatMessage]:
    """Chat messages from dicts, ``(role, content)`` tuples or ``pb.ChatMessage``."""
    if isinstance(messages, str | Mapping):
        raise TypeError("messages must be a list of messages, e.g. [{'role': 'user', 'content': 'hi'}]")
    return [_to_message(message, index) for index, message in enumerate(messages)]


def _to_message(message: MessageLike, index: int) -> pb.ChatMessage:
    if isinstance(message, pb.ChatMessage):
        return message
    if isinstance(message, Mapping):
        if "role" not in message or not _MESSAGE_BODIES & message.keys():
            raise ValueError(f"messages[{index}] needs 'role' and 'content' (or 'parts', or 'tool_calls')")
        try:
            return pb.ChatMessage(**message)
        except (ValueError, TypeError) as error:  # a key ChatMessage has not, or a value of the wrong type
            raise ValueError(f"messages[{index}]: {error}") from None
    if isinstance(message, tuple) and len(message) == 2:
        role, content = message
        return pb.ChatMessage(role=role, content=content)
    raise TypeError(f"messages[{index}]: expected a dict, a (role, content) tuple or pb.ChatMessage, got {message!r}")


_MESSAGE_BODIES = frozenset({"content", "parts", "tool_calls"})


def to_tools(tools: Iterable[ToolLike]) -> list[pb.Tool]:
    """Tools from dicts (ours or OpenAI's ``{"type": "function", "function": {...}}``) or ``pb.Tool``."""
    if isinstance(tools, str | Mapping):
        raise TypeError("tools must be a list of tools, e.g. [{'name': 'get_weather', 'parameters': {...}}]")
    return [_to_tool(tool, index) for index, tool in enumerate(tools)]


def _to_tool(tool: ToolLike, index: int) -> pb.Tool:
    if isinstance(tool, pb.Tool):
        return tool
    if not isinstance(tool, Mapping):
        raise TypeError(f"tools[{index}]: expected a dict or pb.Tool, got {tool!r}")
    function = tool.get("function")
    if tool.get("type") == "function" and isinstance(function, Mapping):
        tool = function  # OpenAI's form, as tools are often written already
    unknown = tool.keys() - {"name", "description", "parameters"}
    if "name" not in tool or unknown:
        raise ValueError(
            f"tools[{index}] needs 'name' and may have 'description' and 'parameters' (got {sorted(tool)})"
        )
    return pb.Tool(
        name=tool["name"],
        description=tool.get("description", ""),
        parameters=to_struct(tool.get("parameters"), f"tools[{index}].parameters"),
    )


def to_struct(parameters: Mapping[str, Any] | None, path: str = "parameters") -> struct_pb2.Struct:
    """A Struct from a JSON-like dict; refuses integers a Struct cannot hold exactly and nesting the gateway refuses."""
    struct = struct_pb2.Struct()
    if parameters:
        _check_values(parameters, path, 1)
        struct.update(dict(parameters))
    return struct


def _check_values(value: object, path: str, depth: int) -> None:
    """Check ``value``, a Struct value ``depth`` levels deep if it is a mapping or a list."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_EXACT_INTEGER:
        raise ValueError(f"{path}: {value} does not fit a Struct number exactly; pass ids as strings")
    if isinstance(value, Mapping | list | tuple) and depth > _MAX_PARAMETER_DEPTH:
        raise ValueError(
            f"{path}: nests dicts and lists more than {_MAX_PARAMETER_DEPTH} levels deep, "
            "more than the gateway takes (parameters itself is level 1)"
        )
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_values(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_values(item, f"{path}[{index}]", depth + 1)


# --- channel options --------------------------------------------------------------------------

# The gRPC service config the clients use unless told otherwise. It is a JSON file so that clients in
# other languages can load the very same text (Go: grpc.WithDefaultServiceConfig, Java:
# defaultServiceConfig(Map), Node: the 'grpc.service_config' channel option); deploy/README.md
# explains each field. In short:
# - round_robin: the channel connects to every address the target resolves to (a headless
#   Kubernetes Service, or "ipv4:10.0.0.1:50051,10.0.0.2:50051") and spreads calls over the ready ones.
# - waitForReady: a call made while no gateway is reachable (a restart, a rollout) waits for one
#   until its deadline instead of failing at once with UNAVAILABLE.
# - timeout: every call has a deadline even when the caller sets none; 600 s is the gateway's own
#   AIP_TOTAL_TIMEOUT_SECONDS default, so the client does not cut calls the gateway still allows.
#   gRPC takes the shorter of this and the call's own timeout.
# - retryPolicy: gRPC retries only until the call is committed, i.e. until the response headers
#   arrive. The gateway sends its headers with the first response message, so exactly the failures
#   before the first message are retried and a stream that fails part-way is never replayed. Codes:
#   UNAVAILABLE (transient upstream trouble, a call cut at the end of a grace period) and CANCELLED,
#   which grpc.aio answers to a call that reaches a server just as it stops (grpc/grpc#41785).
SERVICE_CONFIG_FILE = "service_config.json"
_SERVICE_CONFIG_JSON = importlib.resources.files("clients").joinpath(SERVICE_CONFIG_FILE).read_text("utf-8")
_SERVICE_CONFIG_OPTION = "grpc.service_config"

#: A gRPC service config (the parsed JSON object or its text); None for none, UNSET for the default.
ServiceConfigOption: TypeAlias = Mapping[str, Any] | str | _Unset | None


def default_service_config() -> dict[str, Any]:
    """A fresh copy of the clients' default gRPC service config (``clients/service_config.json``), to adapt."""
    config: dict[str, Any] = json.loads(_SERVICE_CONFIG_JSON)
    return config


def channel_options(
    options: Sequence[tuple[str, Any]] | None, service_config: ServiceConfigOption
) -> list[tuple[str, Any]]:
    """The channel options: the caller's, plus ``grpc.service_config`` unless they set it or passed None."""
    chosen = list(options or ())
    if service_config is None or any(name == _SERVICE_CONFIG_OPTION for name, _ in chosen):
        return chosen
    if service_config is UNSET:
        text = _SERVICE_CONFIG_JSON
    elif isinstance(service_config, str):
        text = service_config
    else:
        text = json.dumps(service_config)
    return [*chosen, (_SERVICE_CONFIG_OPTION, text)]


# --- call options -----------------------------------------------------------------------------


#: The environment variable a client takes its caller key from when given no ``api_key``.
API_KEY_VARIABLE = "AIP_API_KEY"
_AUTHORIZATION_KEY = "authorization"


def api_key_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """``authorization: Bearer <key>`` for ``api_key`` (``$AIP_API_KEY`` when None); empty for an empty key.

    Raises:
        ValueError: the key holds characters gRPC metadata cannot carry; the message does not repeat it.
    """
    key = (os.environ.get(API_KEY_VARIABLE, "") if api_key is None else api_key).strip()
    if not key:
        return ()
    # gRPC refuses such a value only when a call sends it, as INTERNAL "Invalid metadata" (grpc.aio: an
    # ExecuteBatchError); refusing it here says what is wrong, before any call.
    if not all(" " <= character <= "~" for character in key):
        raise ValueError(
            f"the caller key (api_key or ${API_KEY_VARIABLE}) may hold only printable ASCII characters: "
            "gRPC metadata cannot carry others"
        )
    return ((_AUTHORIZATION_KEY, f"Bearer {key}"),)


class ClientBase:
    """The settings both clients share, and the per-call options built from them."""

    def __init__(self, target: str, *, timeout: float | None, metadata: Metadata, api_key: str | None) -> None:
        self.target = target
        #: The deadline in seconds for calls that pass no ``timeout=``; None leaves it to the service config.
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str | bytes], ...] = tuple(metadata)
        # The key is kept only here, out of ``metadata`` and the repr. It goes out as metadata of each call
        # rather than as call credentials, which grpc refuses on a plaintext channel; every stub call, unary
        # or streaming, takes its metadata from _call_options, so no interceptor is needed either.
        self._key_metadata = api_key_metadata(api_key)

    def _call_options(self, timeout: Timeout, metadata: Metadata | None) -> dict[str, Any]:
        """Keyword arguments for a stub call: this call's timeout and metadata over the client's (and its key)."""
        return {
            "timeout": self.timeout if timeout is UNSET else timeout,
            "metadata": merge_metadata(merge_metadata(self._key_metadata, self.metadata), metadata) or None,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.target!r})"


def merge_metadata(base: Metadata, extra: Metadata | None) -> tuple[tuple[str, str | bytes], ...]:
    """``base`` with ``extra`` added; a key in ``extra`` replaces that key's values in ``base``."""
    if not extra:
        return tuple(base)
    replaced = {key.lower() for key, _ in extra}
    return (*(item for item in base if item[0].lower() not in replaced), *extra)


def chunk_text(chunk: pb.StreamChatResponse | pb.StreamWorkflowResponse | pb.ResumeWorkflowResponse) -> str:
    """The text a streamed message adds: a chat ``delta`` or a (resumed) workflow event's ``content``."""
    return str(chunk.delta if isinstance(chunk, pb.StreamChatResponse) else chunk.content)
