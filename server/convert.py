"""Conversions between the API's protobuf messages and the providers' plain values.

Requests are validated here on the way in (the checks every provider shares);
provider-specific checks stay in the providers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from providers.base import (
    ChatFinished,
    ChatInput,
    ChatResult,
    ContentPart,
    FilePart,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    Usage,
    WorkflowInput,
    WorkflowInterrupt,
    WorkflowNodeEvent,
    WorkflowResult,
    WorkflowResume,
)
from providers.errors import InvalidRequest, input_name, quote_input

_ROLES = frozenset({"user", "assistant", "system", "tool"})
_TOOL_CHOICES = frozenset({"", "auto", "none", "required"})
# What OpenAI allows in a function's name, and how many tools a request may offer.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128
# The largest integer a double (a Struct number) holds exactly, with every integer below it.
_MAX_EXACT_INTEGER = 2**53 - 1

#: How deeply ``parameters`` may nest objects (Structs) and lists, counted as JSON counts depth:
#: ``parameters`` itself is level 1, so ``{"a": {"b": [1]}}`` is 3 levels deep. The same on every
#: RPC and for objects and lists alike. 32 keeps real payloads (an OpenAI ``response_format`` JSON
#: schema at OpenAI's own limit of 10 nested objects is about 24 levels) and stays below what
#: protobuf's parser itself takes (recursion limit 100: 33 levels of objects, 49 of lists), so a
#: caller meets this limit, with this message, before protobuf's bare DecodeError.
MAX_PARAMETER_DEPTH = 32
# The longest field path a message names, cut in the middle: 32 nested keys of up to 64 characters
# would make one of kilobytes, and a log line of multi-byte keys far over a few hundred bytes.
_MAX_PATH_CHARS = 100


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """How large a request may be: the one declaration of the AIP_MAX_* settings below, whose names
    the error messages quote."""

    #: Messages in one chat request.
    max_messages: int = 100
    #: UTF-8 bytes of one message's content (and of a resume's data).
    max_message_bytes: int = 256 * 1024
    #: Encoded size of a request's parameters.
    max_parameters_bytes: int = 64 * 1024
    #: Bytes of one image or file sent inline in a message's parts.
    max_part_bytes: int = 2 * 1024 * 1024
    #: Bytes of every image and file sent inline in one request, together (the request itself is
    #: bounded by AIP_MAX_RECEIVE_MESSAGE_BYTES first).
    max_parts_bytes: int = 3 * 1024 * 1024


# --- requests ---------------------------------------------------------------------------------


def chat_input(request: pb.ChatRequest | pb.StreamChatRequest, limits: RequestLimits) -> ChatInput:
    """Validate a chat request and turn it into the providers' ChatInput."""
    if not request.messages:
        raise InvalidRequest("messages", "at least one message is required")
    if len(request.messages) > limits.max_messages:
        raise InvalidRequest(
            "messages",
            f"{len(request.messages)} messages is more than AIP_MAX_MESSAGES allows ({limits.max_messages})",
        )
    inline = _InlineBytes(limits)
    messages = tuple(
        _message(message, f"messages[{index}]", limits, inline) for index, message in enumerate(request.messages)
    )
    if len(request.tools) > MAX_TOOLS:
        raise InvalidRequest("tools", f"{len(request.tools)} tools is more than the {MAX_TOOLS} a request may offer")
    tools = tuple(_tool(tool, f"tools[{index}]", limits) for index, tool in enumerate(request.tools))
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools", "two tools have the same name")
    if request.tool_choice not in _TOOL_CHOICES and request.tool_choice not in names:
        raise InvalidRequest(
            "tool_choice",
            "must be '', 'auto', 'none', 'required' or the name of one of the tools "
            f"(got {quote_input(request.tool_choice)})",
        )
    return ChatInput(
        messages=messages,
        parameters=_parameters(request.parameters, limits),
        user_id=request.user_id,
        conversation_id=request.conversation_id,
        tools=tools,
        tool_choice=request.tool_choice,
        chat_id=request.chat_id,
    )


class _InlineBytes:
    """Counts the bytes of the images and files a request sends inline, against AIP_MAX_PARTS_BYTES."""

    def __init__(self, limits: RequestLimits) -> None:
        self._limits = limits
        self._total = 0

    def add(self, data: bytes, field: str) -> None:
        limits = self._limits
        if len(data) > limits.max_part_bytes:
            raise InvalidRequest(
                field, f"{len(data)} bytes is more than AIP_MAX_PART_BYTES allows ({limits.max_part_bytes})"
            )
        self._total += len(data)
        if self._total > limits.max_parts_bytes:
            raise InvalidRequest(
                field,
                f"the request's inline images and files reach {self._total} bytes, more than AIP_MAX_PARTS_BYTES "
                f"allows ({limits.max_parts_bytes})",
            )


def _message(message: pb.ChatMessage, field: str, limits: RequestLimits, inline: _InlineBytes) -> Message:
    if message.role not in _ROLES:
        raise InvalidRequest(
            f"{field}.role", f"must be 'user', 'assistant', 'system' or 'tool' (got {quote_input(message.role)})"
        )
    tool_calls = tuple(
        ToolCall(id=call.id, type=call.type or "function", function_name=call.function_name, arguments=call.arguments)
        for call in message.tool_calls
    )
    if tool_calls and message.role != "assistant":
        raise InvalidRequest(f"{field}.tool_calls", "only an assistant message carries tool calls")
    for index, call in enumerate(tool_calls):
        if not call.id:
            raise InvalidRequest(f"{field}.tool_calls[{index}].id", "must not be empty")
        _check_text_size(call.arguments, f"{field}.tool_calls[{index}].arguments", limits)
    if message.role == "tool":
        if not message.tool_call_id:
            raise InvalidRequest(
                f"{field}.tool_call_id", "is required for a 'tool' message (the id of the call it answers)"
            )
    elif message.tool_call_id:
        raise InvalidRequest(f"{field}.tool_call_id", "belongs to a 'tool' message only")
    parts = tuple(_part(part, f"{field}.parts[{index}]", limits, inline) for index, part in enumerate(message.parts))
    if parts and message.content:
        raise InvalidRequest(f"{field}.content", "must be empty when parts are set (the parts replace it)")
    if not message.content and not parts and not tool_calls and message.role != "tool":
        raise InvalidRequest(f"{field}.content", "must not be empty")
    _check_text_size(message.content, f"{field}.content", limits)
    return Message(message.role, message.content, tool_calls, message.tool_call_id, parts)


def _part(part: pb.ContentPart, field: str, limits: RequestLimits, inline: _InlineBytes) -> ContentPart:
    kind = part.WhichOneof("kind")
    if kind == "text":
        if not part.text:
            raise InvalidRequest(f"{field}.text", "must not be empty")
        _check_text_size(part.text, f"{field}.text", limits)
        return TextPart(part.text)
    if kind == "image":
        image = part.image
        _one_source(f"{field}.image", image.url, image.file_id, image.data)
        if image.data:
            inline.add(image.data, f"{field}.image.data")
            if not image.mime_type.startswith("image/"):
                raise InvalidRequest(f"{field}.image.mime_type", "is required with data, e.g. 'image/png'")
        return ImagePart(url=image.url, data=image.data, mime_type=image.mime_type, file_id=image.file_id)
    if kind == "file":
        file = part.file
        _one_source(f"{field}.file", file.url, file.file_id, file.data)
        if file.data:
            inline.add(file.data, f"{field}.file.data")
            if not file.name or not file.mime_type:
                raise InvalidRequest(f"{field}.file", "name and mime_type are required with data")
        return FilePart(url=file.url, file_id=file.file_id, data=file.data, name=file.name, mime_type=file.mime_type)
    raise InvalidRequest(field, "must be text, an image or a file")


def _one_source(field: str, url: str, file_id: str, data: bytes) -> None:
    given = [name for name, value in (("url", url), ("file_id", file_id), ("data", data)) if value]
    if len(given) != 1:
        raise InvalidRequest(field, f"needs exactly one of url, file_id or data (got {', '.join(given) or 'none'})")
    if url and not url.startswith(("http://", "https://")):
        raise InvalidRequest(f"{field}.url", f"must be an http(s) URL (got {quote_input(url)})")


def _tool(tool: pb.Tool, field: str, limits: RequestLimits) -> Tool:
    if not _TOOL_NAME.match(tool.name):
        raise InvalidRequest(f"{field}.name", f"must be 1 to 64 letters, digits, _ or - (got {quote_input(tool.name)})")
    _check_text_size(tool.description, f"{field}.description", limits)
    return Tool(tool.name, tool.description, _parameters(tool.parameters, limits, f"{field}.parameters"))


def workflow_input(request: pb.RunWorkflowRequest | pb.StreamWorkflowRequest, limits: RequestLimits) -> WorkflowInput:
    """Turn a workflow request into the providers' WorkflowInput."""
    return WorkflowInput(
        workflow_id=request.workflow_id,
        parameters=_parameters(request.parameters, limits),
        bot_id=request.bot_id,
        app_id=request.app_id,
        workflow_version=request.workflow_version,
        connector_id=request.connector_id,
        ext=dict(request.ext),
    )


def workflow_resume(request: pb.ResumeWorkflowRequest, limits: RequestLimits) -> WorkflowResume:
    """Validate a resume request and turn it into the providers' WorkflowResume."""
    if not request.event_id:
        raise InvalidRequest("event_id", "is required (the interrupt's event_id from StreamWorkflow)")
    if not request.resume_data:
        raise InvalidRequest("resume_data", "is required (the answer to what the interrupt asked for)")
    _check_text_size(request.resume_data, "resume_data", limits)
    return WorkflowResume(
        event_id=request.event_id,
        resume_data=request.resume_data,
        interrupt_type=request.interrupt_type,
        workflow_id=request.workflow_id,
    )


def _check_text_size(text: str, field: str, limits: RequestLimits) -> None:
    # A character is at most 4 bytes in UTF-8: short texts need no encoding to be checked.
    if len(text) * 4 > limits.max_message_bytes and len(text.encode()) > limits.max_message_bytes:
        raise InvalidRequest(
            field, f"is larger than AIP_MAX_MESSAGE_BYTES allows ({limits.max_message_bytes} bytes of UTF-8)"
        )


def _parameters(struct: struct_pb2.Struct, limits: RequestLimits, path: str = "parameters") -> dict[str, Any]:
    size = struct.ByteSize()
    if size > limits.max_parameters_bytes:
        raise InvalidRequest(
            path,
            f"{size} bytes is more than AIP_MAX_PARAMETERS_BYTES allows ({limits.max_parameters_bytes})",
        )
    return struct_to_dict(struct, path)


def struct_to_dict(struct: struct_pb2.Struct, path: str, depth: int = 1) -> dict[str, Any]:
    """A Struct as plain Python values, with integral numbers back as ints.

    Struct keeps every number as a double, so 3 arrives as 3.0; upstreams expect
    the integer the caller wrote. ``depth`` is the Struct's own nesting level
    (1 for ``parameters``); deeper than MAX_PARAMETER_DEPTH is refused.
    """
    _check_depth(path, depth)
    return {key: _value(value, f"{path}.{input_name(key)}", depth) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value, path: str, depth: int) -> Any:
    """The plain value of ``value``, which sits in a Struct or list ``depth`` levels deep."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            # JSON, which every upstream speaks, has no NaN or Infinity.
            raise _invalid(path, "must be a finite number")
        if number.is_integer():
            if abs(number) > _MAX_EXACT_INTEGER:
                # A Struct number is a double: past 2^53 the caller's integer may already have
                # been changed in transit (2^53 + 1 arrives as 2^53), and nothing can tell.
                raise _invalid(
                    path,
                    f"integers beyond ±{_MAX_EXACT_INTEGER} cannot be sent exactly as a JSON/Struct number; "
                    "send it as a string",
                )
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value, path, depth + 1)
    if kind == "list_value":
        _check_depth(path, depth + 1)
        return [_value(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value.list_value.values)]
    return None


def _check_depth(path: str, depth: int) -> None:
    if depth > MAX_PARAMETER_DEPTH:
        raise _invalid(
            path,
            f"is nested deeper than the {MAX_PARAMETER_DEPTH} levels of objects and lists "
            "parameters may have (parameters itself is level 1)",
        )


def _invalid(path: str, description: str) -> InvalidRequest:
    """InvalidRequest for the value at ``path``, the path cut in the middle when it is long."""
    if len(path) > _MAX_PATH_CHARS:
        half = _MAX_PATH_CHARS // 2
        path = f"{path[:half]}…{path[-half:]}"
    return InvalidRequest(path, description)


# --- responses --------------------------------------------------------------------------------


def usage_message(usage: Usage | None) -> pb.Usage | None:
    """The API's Usage, or None when the upstream reported none."""
    if usage is None:
        return None
    return pb.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
        source=pb.USAGE_SOURCE_REPORTED,
    )


_FINISH_REASONS = {
    FinishReason.UNSPECIFIED: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}


def tool_call_messages(tool_calls: tuple[ToolCall, ...]) -> list[pb.ToolCall]:
    """The API's ToolCalls."""
    return [
        pb.ToolCall(id=call.id, type=call.type, function_name=call.function_name, arguments=call.arguments)
        for call in tool_calls
    ]


def chat_response(result: ChatResult) -> pb.ChatResponse:
    """A whole chat turn as the API's ChatResponse."""
    return pb.ChatResponse(
        content=result.content,
        reasoning=result.reasoning,
        conversation_id=result.conversation_id,
        usage=usage_message(result.usage),
        finish_reason=_FINISH_REASONS[result.finish_reason],
        chat_id=result.chat_id,
        tool_calls=tool_call_messages(result.tool_calls),
        follow_ups=result.follow_ups,
        awaiting_reply=result.awaiting_reply,
    )


def stream_chat_response(event: TextDelta | ReasoningDelta | ChatFinished) -> pb.StreamChatResponse:
    """One chat event as the API's StreamChatResponse (the per-token hot path)."""
    if type(event) is TextDelta:
        return pb.StreamChatResponse(delta=event.text)
    if type(event) is ReasoningDelta:
        return pb.StreamChatResponse(reasoning_delta=event.text)
    assert isinstance(event, ChatFinished)
    return pb.StreamChatResponse(
        usage=usage_message(event.usage),
        conversation_id=event.conversation_id,
        finish_reason=_FINISH_REASONS[event.finish_reason],
        chat_id=event.chat_id,
        tool_calls=tool_call_messages(event.tool_calls),
        follow_ups=event.follow_ups,
        awaiting_reply=event.awaiting_reply,
    )


def run_workflow_response(result: WorkflowResult) -> pb.RunWorkflowResponse:
    """A whole workflow run (or the interrupt it stopped at) as the API's RunWorkflowResponse."""
    return pb.RunWorkflowResponse(
        output=result.output,
        execute_id=result.execute_id,
        debug_url=result.debug_url,
        usage=usage_message(result.usage),
        interrupt=_interrupt_message(result.interrupt),
    )


def stream_workflow_response(event: WorkflowNodeEvent) -> pb.StreamWorkflowResponse:
    """One workflow event as the API's StreamWorkflowResponse."""
    return pb.StreamWorkflowResponse(**_workflow_event_fields(event))


def resume_workflow_response(event: WorkflowNodeEvent) -> pb.ResumeWorkflowResponse:
    """One event of a resumed workflow as the API's ResumeWorkflowResponse."""
    return pb.ResumeWorkflowResponse(**_workflow_event_fields(event))


def _workflow_event_fields(event: WorkflowNodeEvent) -> dict[str, Any]:
    # StreamWorkflowResponse and ResumeWorkflowResponse have the same fields (buf
    # wants one response type per RPC), so both are built from one mapping.
    return {
        "content": event.content,
        "node_title": event.node_title,
        "node_seq_id": event.node_seq_id,
        "node_is_finish": event.node_is_finish,
        "node_id": event.node_id,
        "usage": usage_message(event.usage),
        "interrupt": _interrupt_message(event.interrupt),
        "execute_id": event.execute_id,
        "debug_url": event.debug_url,
    }


def _interrupt_message(interrupt: WorkflowInterrupt | None) -> pb.WorkflowInterrupt | None:
    if interrupt is None:
        return None
    message = pb.WorkflowInterrupt(event_id=interrupt.event_id, type=interrupt.interrupt_type, data=interrupt.data)
    if interrupt.required_parameters is not None:
        message.required_parameters.CopyFrom(_json_value(interrupt.required_parameters))
    return message


def _json_value(value: Any) -> struct_pb2.Value:
    """Any JSON value as a protobuf Value (for what the provider describes freely)."""
    message = struct_pb2.Value()
    if isinstance(value, dict):
        message.struct_value.update(value)
    elif isinstance(value, list):
        message.list_value.extend(value)
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int | float):
        message.number_value = value
    elif isinstance(value, str):
        message.string_value = value
    else:
        message.null_value = struct_pb2.NULL_VALUE
    return message
