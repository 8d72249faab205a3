"""What Coze's stream events mean, as pure rules: parsed SSE events in, the gateway's provider events (or errors) out.

``ChatTurn`` reads a chat stream (/v3/chat, or the continuation submit_tool_outputs streams)
and ``WorkflowRun`` a workflow stream (stream_run, stream_resume), one parsed event at a
time: what each event yields, which event ends the stream, and which is a failure. They do
no I/O, so they are tested on lists of events (tests/test_coze_events.py); the HTTP modules
(``chat``, ``workflows``) only open the stream and feed them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import cozepy
import pydantic

from providers.base import (
    ChatEvent,
    ChatFinished,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    Usage,
    WorkflowInterrupt,
    WorkflowNodeEvent,
)
from providers.coze.errors import PROVIDER, coze_error
from providers.errors import UpstreamError, UpstreamUnavailable
from providers.sse import ServerSentEvent

_Model = TypeVar("_Model", bound=pydantic.BaseModel)

# Event data is parsed leniently: JSON wants control characters inside strings
# escaped, but one sent raw is still the caller's text, not a reason to fail the answer.
_EVENT_JSON = json.JSONDecoder(strict=False)
# The decoder's scanner, called directly: the data of an event is one JSON value with nothing
# around it, and ``decode`` would spend about as long again, per event, looking for whitespace.
# (JSONDecoder.__init__ sets the attribute; typeshed leaves it out.)
_scan_json: Callable[[str, int], tuple[Any, int]] = _EVENT_JSON.scan_once  # type: ignore[attr-defined]


class ChatTurn:
    """One chat turn as its stream tells it, one event at a time.

    ``read`` turns each event into the provider events it means. The turn ends (``ended``)
    when Coze ends the chat: ``conversation.chat.completed`` (ChatFinished, STOP),
    ``conversation.chat.requires_action`` (ChatFinished, TOOL_CALLS with the calls to answer)
    or ``conversation.chat.failed`` (raised); nothing after that event matters. An ``error``
    event is raised without ending the chat: Coze may still run it, so it must be cancelled.
    A body that ends first is ``cut()``.

    The chat's ids come from ``conversation.chat.created``. A submit_tool_outputs
    continuation begins with ``conversation.chat.in_progress`` (Coze's own example shows
    chat.created first: both are read): it is read by a turn made with the ids it continues
    (``submit.continuation_turn``), and a turn that has none takes them from chat.in_progress.
    """

    __slots__ = ("_answer_ids", "_follow_ups", "chat_id", "conversation_id", "ended", "log_id")

    def __init__(self, *, conversation_id: str = "", chat_id: str = "", log_id: str = "") -> None:
        #: The chat's ids, once known: what /v3/chat/cancel needs.
        self.conversation_id = conversation_id
        self.chat_id = chat_id
        #: Coze's log id of the stream (its x-tt-logid), for the errors.
        self.log_id = log_id
        #: Coze has ended the chat (completed, waits for tool outputs, or failed): nothing to cancel.
        self.ended = False
        self._answer_ids: set[str] = set()  # answer messages that arrived as deltas
        self._follow_ups: list[str] = []

    def read(self, sse: ServerSentEvent) -> tuple[ChatEvent, ...]:
        """The provider events ``sse`` means, in order; raises the UpstreamError it means."""
        kind = sse.event
        # Deltas are nearly every event: one JSON decode and a few dict lookups each. Only the
        # chat's final event (usage, tool calls) goes through cozepy's pydantic model.
        if kind == "conversation.message.delta":
            delta = self._json(sse)
            if delta.get("type") != "answer":
                return ()
            self._answer_ids.add(str(delta.get("id") or ""))
            content = delta.get("content")
            reasoning = delta.get("reasoning_content")
            if reasoning and isinstance(reasoning, str):
                if content and isinstance(content, str):
                    return ReasoningDelta(reasoning), TextDelta(content)
                return (ReasoningDelta(reasoning),)
            if content and isinstance(content, str):
                return (TextDelta(content),)
            return ()
        if kind == "conversation.message.completed":
            return self._message_completed(self._json(sse))
        if kind == "conversation.chat.created" or (kind == "conversation.chat.in_progress" and not self.chat_id):
            # A chat's ids come with chat.created; a continuation (submit_tool_outputs) begins
            # with chat.in_progress instead, which names the chat too: a turn made without the
            # ids it continues learns them there, so the chat can still be cancelled.
            started = self._json(sse)
            conversation_id, chat_id = str(started.get("conversation_id") or ""), str(started.get("id") or "")
            if conversation_id and chat_id:
                self.conversation_id, self.chat_id = conversation_id, chat_id
            return ()
        if kind == "conversation.chat.completed":
            chat = self._chat(sse)
            self.ended = True
            return (self._finished(chat, FinishReason.STOP),)
        if kind == "conversation.chat.requires_action":
            chat = self._chat(sse)
            self.ended = True
            return (self._finished(chat, FinishReason.TOOL_CALLS, tool_calls(chat)),)
        if kind == "conversation.chat.failed":
            self.ended = True
            raise chat_failed(self._json(sse), self.log_id)
        if kind == "error":
            raise error_event(sse.data, self.log_id)
        # Everything else (in_progress, audio, done, unknown) is not answer text.
        return ()

    def cut(self) -> UpstreamUnavailable:
        """The error for a body that ended before Coze ended the chat."""
        return UpstreamUnavailable(
            "Coze stream ended before conversation.chat.completed", provider=PROVIDER, log_id=self.log_id
        )

    def _message_completed(self, message: dict[str, Any]) -> tuple[ChatEvent, ...]:
        content = message.get("content")
        if not content or not isinstance(content, str):
            return ()
        message_type = message.get("type")
        if message_type == "follow_up":
            self._follow_ups.append(content)
        elif message_type == "answer" and str(message.get("id") or "") not in self._answer_ids:
            # An answer that arrived whole, without deltas, is still part of the answer.
            return (TextDelta(content),)
        return ()

    def _finished(self, chat: cozepy.Chat, reason: FinishReason, calls: tuple[ToolCall, ...] = ()) -> ChatFinished:
        return ChatFinished(
            finish_reason=reason,
            usage=usage(chat.usage),
            conversation_id=chat.conversation_id,
            chat_id=chat.id,
            tool_calls=calls,
            follow_ups=tuple(self._follow_ups),
        )

    def _chat(self, sse: ServerSentEvent) -> cozepy.Chat:
        # One final chat event per answer: a pydantic model for it costs little.
        return model(cozepy.Chat, self._json(sse), self.log_id)

    def _json(self, sse: ServerSentEvent) -> dict[str, Any]:
        return event_json(sse, self.log_id)


class WorkflowRun:
    """One workflow run as its stream tells it, one event at a time.

    ``read`` turns each event into the provider event it means. A run ends (``ended``) with
    ``Done``, or with an ``Interrupt`` (also ``interrupted``): Coze's own examples end the
    stream right after it (cozepy's fixture sends a ``Done`` after it too), and the run then
    waits for ResumeWorkflow. An ``Error`` event is raised; a body that ends first is ``cut()``.
    PING heartbeats and unknown events mean nothing.
    """

    __slots__ = ("ended", "interrupted", "log_id")

    def __init__(self, *, log_id: str = "") -> None:
        #: Coze's log id of the stream (its x-tt-logid), for the errors.
        self.log_id = log_id
        self.ended = False
        self.interrupted = False

    def read(self, sse: ServerSentEvent) -> WorkflowNodeEvent | None:
        """The provider event ``sse`` means, if any; raises the UpstreamError it means."""
        kind = sse.event
        if kind == "Message":
            return self._message(event_json(sse, self.log_id))
        if kind == "Interrupt":
            self.ended = self.interrupted = True
            return self._interrupt(event_json(sse, self.log_id))
        if kind == "Error":
            data = event_json(sse, self.log_id)
            raise coze_error(
                data.get("error_code"), f"Coze workflow failed: {data.get('error_message', '')}", log_id=self.log_id
            )
        if kind == "Done":
            self.ended = True
        return None

    def cut(self) -> UpstreamUnavailable:
        """The error for a body that ended before the run did."""
        return UpstreamUnavailable(
            "Coze workflow stream ended before its Done event", provider=PROVIDER, log_id=self.log_id
        )

    def _message(self, data: dict[str, Any]) -> WorkflowNodeEvent:
        return WorkflowNodeEvent(
            content=str(data.get("content", "")),
            node_title=str(data.get("node_title", "")),
            node_seq_id=str(data.get("node_seq_id", "")),
            node_is_finish=bool(data.get("node_is_finish", False)),
            node_id=str(data.get("node_id", "")),
            usage=usage_of(data.get("usage"), self.log_id),
        )

    def _interrupt(self, data: dict[str, Any]) -> WorkflowNodeEvent:
        found = interrupt(data.get("interrupt_data"), self.log_id)
        if found is None:
            raise UpstreamUnavailable(
                "Coze sent an Interrupt event without interrupt_data", provider=PROVIDER, log_id=self.log_id
            )
        return WorkflowNodeEvent(node_title=str(data.get("node_title", "")), interrupt=found)


# --- the parts of events and answers ------------------------------------------------------------


def event_json(sse: ServerSentEvent, log_id: str) -> dict[str, Any]:
    """An event's data as a JSON object; anything else means the stream is broken."""
    text = sse.data
    try:
        data, end = _scan_json(text, 0)
    except (StopIteration, ValueError):
        end = -1
    if end != len(text):
        # Whitespace around the value, something after it, or no value: the whole decoder decides.
        try:
            data = _EVENT_JSON.decode(text)
        except ValueError:
            data = None
    if not isinstance(data, dict):
        raise UpstreamUnavailable(f"Coze sent a malformed {sse.event} event", provider=PROVIDER, log_id=log_id)
    return data


def model(cls: type[_Model], data: object, log_id: str) -> _Model:
    """``data`` as one of cozepy's models; one that does not match means the stream is broken."""
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError as error:
        raise UpstreamUnavailable(
            "Coze sent an event that does not match its schema", provider=PROVIDER, log_id=log_id
        ) from error


def chat_failed(data: Mapping[str, Any], log_id: str) -> UpstreamError:
    """The error of a conversation.chat.failed event, in either documented shape.

    Real traffic sends a Chat object with ``last_error {code, msg}``; Coze's API reference
    shows ``{"code", "msg"}`` itself as the event's data.
    """
    last_error = data.get("last_error")
    details: Mapping[str, Any] = last_error if isinstance(last_error, dict) and last_error.get("code") else data
    return coze_error(details.get("code"), f"Coze chat failed: {details.get('msg', '')}", log_id=log_id)


def error_event(raw: str, log_id: str) -> UpstreamError:
    """The error of a chat ``error`` event (``{"code", "msg"}``, or anything else)."""
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    details: Mapping[str, Any] = payload if isinstance(payload, dict) else {}
    return coze_error(details.get("code"), f"Coze error event: {details.get('msg', '') or raw}", log_id=log_id)


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


def interrupt(interrupt_data: object, log_id: str) -> WorkflowInterrupt | None:
    """An ``interrupt_data`` object (of an Interrupt event or a /v1/workflow/run answer); None when absent."""
    if not isinstance(interrupt_data, dict) or not interrupt_data.get("event_id"):
        return None
    try:
        interrupt_type = int(interrupt_data.get("type") or 0)
    except (TypeError, ValueError):
        raise UpstreamUnavailable(
            "Coze sent an interrupt whose type is not a number", provider=PROVIDER, log_id=log_id
        ) from None
    return WorkflowInterrupt(
        event_id=str(interrupt_data["event_id"]),
        interrupt_type=interrupt_type,
        data=text(interrupt_data.get("data")),
    )


def usage(chat_usage: cozepy.ChatUsage | None) -> Usage | None:
    """Coze's usage as the gateway's."""
    if chat_usage is None:
        return None
    return Usage(
        input_tokens=chat_usage.input_count or 0,
        output_tokens=chat_usage.output_count or 0,
        total_tokens=chat_usage.token_count or 0,
    )


def usage_of(value: object, log_id: str) -> Usage | None:
    """A usage object of a Coze answer ({input_count, output_count, token_count}); None when absent."""
    if not isinstance(value, dict):
        return None
    return usage(model(cozepy.ChatUsage, value, log_id))


def text(value: object) -> str:
    """A string field of a Coze answer; "" when absent or null."""
    return value if isinstance(value, str) else "" if value is None else str(value)
