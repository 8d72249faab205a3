"""What the sync and async clients share: request building, error conversion and call options."""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf import descriptor_pool, message_factory, struct_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from aiplatform.v1 import aiplatform_pb2 as pb

_LOGGER = logging.getLogger(__name__)

#: A chat message: ``{"role": ..., "content": ...}``, ``(role, content)`` or a ``pb.ChatMessage``.
MessageLike: TypeAlias = Mapping[str, str] | tuple[str, str] | pb.ChatMessage
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

# Struct keeps numbers as doubles, exact only up to 2**53; larger ints (19-digit Coze ids) would change.
_MAX_EXACT_INTEGER = 2**53
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
) -> _ChatRequestT:
    """A ChatRequest or StreamChatRequest from the clients' plain arguments."""
    return request_type(
        service_name=service_name,
        messages=to_messages(messages),
        parameters=to_struct(parameters),
        user_id=user_id,
        conversation_id=conversation_id,
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
        try:
            return pb.ChatMessage(role=message["role"], content=message["content"])
        except KeyError as error:
            raise ValueError(f"messages[{index}] needs 'role' and 'content' (missing {error})") from None
    if isinstance(message, tuple) and len(message) == 2:
        role, content = message
        return pb.ChatMessage(role=role, content=content)
    raise TypeError(f"messages[{index}]: expected a dict, a (role, content) tuple or pb.ChatMessage, got {message!r}")


def to_struct(parameters: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """A Struct from a JSON-like dict; refuses integers a Struct cannot hold exactly."""
    struct = struct_pb2.Struct()
    if parameters:
        _check_integers(parameters, "parameters")
        struct.update(dict(parameters))
    return struct


def _check_integers(value: object, path: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_EXACT_INTEGER:
        raise ValueError(f"{path}: {value} does not fit a Struct number exactly; pass ids as strings")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_integers(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_integers(item, f"{path}[{index}]")


# --- call options -----------------------------------------------------------------------------


class ClientBase:
    """The settings both clients share, and the per-call options built from them."""

    def __init__(self, target: str, *, timeout: float | None, metadata: Metadata) -> None:
        self.target = target
        #: The deadline in seconds for calls that pass no ``timeout=``; None means no deadline.
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str | bytes], ...] = tuple(metadata)

    def _call_options(self, timeout: Timeout, metadata: Metadata | None) -> dict[str, Any]:
        """Keyword arguments for a stub call: this call's timeout and metadata over the client's."""
        return {
            "timeout": self.timeout if timeout is UNSET else timeout,
            "metadata": merge_metadata(self.metadata, metadata) or None,
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
