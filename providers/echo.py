"""Demo services that need no account: echo (chat) and echo_workflow (workflow).

They make a fresh ``make run`` useful and give grpcurl something to call.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from typing import ClassVar

from providers.base import (
    ChatEvent,
    ChatFinished,
    ChatInput,
    ChatService,
    FinishReason,
    ParameterSpec,
    TextDelta,
    Usage,
    WorkflowInput,
    WorkflowNodeEvent,
    WorkflowResult,
    WorkflowService,
    int_parameter,
    reject_unknown_parameters,
)
from providers.errors import InvalidRequest

# Each piece is a word with the white space before it; trailing white space is a
# last piece of its own, so the pieces join back to exactly the input.
_WORD_PIECES = re.compile(r"\s*\S+|\s+$")


def split_words(text: str) -> list[str]:
    """Split text into word pieces that join back to exactly ``text``."""
    return _WORD_PIECES.findall(text)


class EchoChatService(ChatService):
    """Streams the last user message back word by word."""

    provider: ClassVar[str] = "echo"

    def __init__(self, name: str = "echo", description: str = "") -> None:
        super().__init__(
            name,
            description or "Demo: streams the last user message back word by word.",
            (ParameterSpec("delay_ms", "integer", "pause before each word, in milliseconds (default 0)"),),
        )

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        reject_unknown_parameters(request.parameters, frozenset(spec.name for spec in self.parameters))
        delay_ms = int_parameter(request.parameters, "delay_ms", 0, minimum=0, maximum=60_000)
        last = request.messages[-1]
        if last.role != "user":
            raise InvalidRequest(f"messages[{len(request.messages) - 1}].role", "the last message must be 'user'")
        pieces = split_words(last.content)
        for piece in pieces:
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            yield TextDelta(piece)
        input_tokens = sum(len(split_words(message.content)) for message in request.messages)
        yield ChatFinished(
            finish_reason=FinishReason.STOP,
            usage=Usage(input_tokens, len(pieces), input_tokens + len(pieces)),
            conversation_id=request.conversation_id,
        )


class EchoWorkflowService(WorkflowService):
    """Streams its input parameters back, one node event per parameter."""

    provider: ClassVar[str] = "echo_workflow"

    def __init__(self, name: str = "echo_workflow", description: str = "") -> None:
        super().__init__(
            name,
            description
            or "Demo: a workflow that streams each input parameter back as a node event (in key order), "
            'then an End node whose content is {"output": <all parameters>}.',
        )

    async def run_workflow(self, request: WorkflowInput) -> WorkflowResult:
        return WorkflowResult(output=_end_output(request), execute_id="echo")

    async def stream_workflow(self, request: WorkflowInput) -> AsyncGenerator[WorkflowNodeEvent, None]:
        # A Struct is a map: its key order is not kept on the wire, so use a stable one.
        for key, value in sorted(request.parameters.items()):
            yield WorkflowNodeEvent(
                content=json.dumps(value, ensure_ascii=False),
                node_title=key,
                node_seq_id="0",
                node_is_finish=True,
            )
        yield WorkflowNodeEvent(content=_end_output(request), node_title="End", node_seq_id="0", node_is_finish=True)


def _end_output(request: WorkflowInput) -> str:
    return json.dumps({"output": dict(request.parameters)}, ensure_ascii=False, sort_keys=True)
