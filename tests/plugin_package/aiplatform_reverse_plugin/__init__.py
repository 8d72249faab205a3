"""An example provider plugin: a chat service that streams the last user message reversed.

It uses only the gateway's public provider interface (``providers.base``,
``providers.catalog``, ``providers.errors``), as any third-party provider would.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import ClassVar

from providers.base import ChatEvent, ChatFinished, ChatInput, ChatService, TextDelta, reject_unknown_parameters
from providers.catalog import ServiceConfig


class ReverseChatService(ChatService):
    """Answers with the last user message reversed, one character at a time."""

    provider: ClassVar[str] = "reverse"

    def __init__(self, name: str, description: str, *, upper: bool) -> None:
        super().__init__(name, description)
        self._upper = upper

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        reject_unknown_parameters(request.parameters, frozenset())
        text = request.messages[-1].content[::-1]
        for character in text.upper() if self._upper else text:
            yield TextDelta(character)
        yield ChatFinished()


def create_service(config: ServiceConfig) -> ChatService:
    """The factory the gateway calls for a service whose provider is "reverse"."""
    return ReverseChatService(
        config.name,
        config.description or "Answers with your message reversed (example plugin).",
        upper=bool(config.options.get("upper", False)),
    )
