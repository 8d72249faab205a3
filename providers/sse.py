"""A small Server-Sent Events reader over an httpx streaming response.

It follows the WHATWG event-stream rules that matter for AI upstreams: a blank
line dispatches the event, ``:`` lines are comments (heartbeats), a space after
the colon is optional, and several ``data:`` lines join with newlines. Unlike
cozepy's line counter it never desynchronises on a heartbeat or a missing ``id:``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event."""

    event: str
    data: str
    id: str = ""


async def iter_sse(response: httpx.Response) -> AsyncGenerator[ServerSentEvent, None]:
    """Yield the events of ``response`` as they arrive.

    An event still pending at the end of the body is dispatched too: Coze's own
    recorded streams end without the final blank line.
    """
    event = ""
    event_id = ""
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data or event:
                yield ServerSentEvent(event or "message", "\n".join(data), event_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
        # "retry" and unknown fields are ignored, as the standard says.
    if data or event:
        yield ServerSentEvent(event or "message", "\n".join(data), event_id)
