"""Coze's stream events as the gateway's provider events: parsing and the rules of what each event means."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import cozepy

from providers.base import ChatFinished, FinishReason, ToolCall, Usage, WorkflowInterrupt, WorkflowNodeEvent
from providers.coze.errors import LOG_ID_HEADER, PROVIDER, coze_error
from providers.errors import UpstreamError, UpstreamUnavailable
from providers.http import UpstreamCall
from providers.sse import ServerSentEvent

# Event data is parsed leniently: JSON wants control characters inside strings
# escaped, but one sent raw is still the caller's text, not a reason to fail the answer.
_EVENT_JSON = json.JSONDecoder(strict=False)


def usage(usage: cozepy.ChatUsage | None) -> Usage | None:
    """A chat's usage as the gateway's."""
    if usage is None:
        return None
    return Usage(
        input_tokens=usage.input_count or 0,
        output_tokens=usage.output_count or 0,
        total_tokens=usage.token_count or 0,
    )


def chat_finished(
    chat: cozepy.Chat, reason: FinishReason, follow_ups: list[str], tool_calls: tuple[ToolCall, ...] = ()
) -> ChatFinished:
    """The final event of a chat Coze ended."""
    return ChatFinished(
        finish_reason=reason,
        usage=usage(chat.usage),
        conversation_id=chat.conversation_id,
        chat_id=chat.id,
        tool_calls=tool_calls,
        follow_ups=tuple(follow_ups),
    )


def tool_calls(chat: cozepy.Chat) -> tuple[ToolCall, ...]:
    """The tool calls of a requires_action chat (Coze's submit_tool_outputs action)."""
    action = chat.required_action
    submit = action.submit_tool_outputs if action is not None else None
    if submit is None:
        return ()
    return tuple(
        ToolCall(
            id=call.id,
            # A str enum; .value is the wire string, also for values cozepy does not know.
            type=str(call.type.value),
            function_name=call.function.name if call.function is not None else "",
            arguments=call.function.arguments if call.function is not None else "",
        )
        for call in submit.tool_calls
    )


def workflow_message(sse: ServerSentEvent, call: UpstreamCall) -> WorkflowNodeEvent:
    """A workflow ``Message`` event: one node's output."""
    data = event_json(sse, call)
    return WorkflowNodeEvent(
        content=str(data.get("content", "")),
        node_title=str(data.get("node_title", "")),
        node_seq_id=str(data.get("node_seq_id", "")),
        node_is_finish=bool(data.get("node_is_finish", False)),
        node_id=str(data.get("node_id", "")),
        usage=usage_of(data.get("usage")),
    )


def workflow_interrupt(sse: ServerSentEvent, call: UpstreamCall) -> WorkflowNodeEvent:
    """A workflow ``Interrupt`` event: the run waits for ResumeWorkflow."""
    data = event_json(sse, call)
    found = interrupt(data.get("interrupt_data"), call)
    if found is None:
        raise UpstreamUnavailable(
            "Coze sent an Interrupt event without interrupt_data", provider=PROVIDER, log_id=call.header(LOG_ID_HEADER)
        )
    return WorkflowNodeEvent(node_title=str(data.get("node_title", "")), interrupt=found)


def interrupt(interrupt_data: object, call: UpstreamCall) -> WorkflowInterrupt | None:
    """An ``interrupt_data`` object (of an Interrupt event or a /v1/workflow/run answer); None when absent."""
    if not isinstance(interrupt_data, dict) or not interrupt_data.get("event_id"):
        return None
    try:
        interrupt_type = int(interrupt_data.get("type") or 0)
    except (TypeError, ValueError):
        raise UpstreamUnavailable(
            "Coze sent an interrupt whose type is not a number", provider=PROVIDER, log_id=call.header(LOG_ID_HEADER)
        ) from None
    return WorkflowInterrupt(
        event_id=str(interrupt_data["event_id"]),
        interrupt_type=interrupt_type,
        data=text(interrupt_data.get("data")),
    )


def text(value: object) -> str:
    """A string field of a Coze answer; "" when absent or null."""
    return value if isinstance(value, str) else "" if value is None else str(value)


def usage_of(value: object) -> Usage | None:
    """A usage object of a Coze answer ({input_count, output_count, token_count}); None when absent."""
    if not isinstance(value, dict):
        return None
    return usage(cozepy.ChatUsage.model_validate(value))


def workflow_error(sse: ServerSentEvent, call: UpstreamCall) -> UpstreamError:
    """The error of a workflow ``Error`` event."""
    data = event_json(sse, call)
    return coze_error(
        data.get("error_code"),
        f"Coze workflow failed: {data.get('error_message', '')}",
        log_id=call.header(LOG_ID_HEADER),
    )


def chat_failed(data: Mapping[str, Any], call: UpstreamCall) -> UpstreamError:
    """The error of a conversation.chat.failed event, in either documented shape.

    Real traffic sends a Chat object with ``last_error {code, msg}``; Coze's API reference
    shows ``{"code", "msg"}`` itself as the event's data.
    """
    last_error = data.get("last_error")
    details: Mapping[str, Any] = last_error if isinstance(last_error, dict) and last_error.get("code") else data
    return coze_error(
        details.get("code"), f"Coze chat failed: {details.get('msg', '')}", log_id=call.header(LOG_ID_HEADER)
    )


def chat(sse: ServerSentEvent, call: UpstreamCall) -> cozepy.Chat:
    """A chat event's Chat object."""
    # One final chat event per answer: a pydantic model for it costs little.
    return cozepy.Chat.model_validate(event_json(sse, call))


def event_json(sse: ServerSentEvent, call: UpstreamCall) -> dict[str, Any]:
    """An event's data as a JSON object; anything else means the stream is broken."""
    try:
        data = _EVENT_JSON.decode(sse.data)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise UpstreamUnavailable(
            f"Coze sent a malformed {sse.event} event", provider=PROVIDER, log_id=call.header(LOG_ID_HEADER)
        )
    return data


def error_event(raw: str, call: UpstreamCall) -> UpstreamError:
    """The error of a chat ``error`` event."""
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    details: Mapping[str, Any] = payload if isinstance(payload, dict) else {}
    return coze_error(
        details.get("code"),
        f"Coze error event: {details.get('msg', '') or raw}",
        log_id=call.header(LOG_ID_HEADER),
    )
