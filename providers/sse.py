"""A small Server-Sent Events reader over the chunks of a streaming HTTP body.

It follows the WHATWG event-stream rules that matter for AI upstreams: a blank
line dispatches the event, ``:`` lines are comments (heartbeats), a space after
the colon is optional, and several ``data:`` lines join with newlines. Unlike
cozepy's line counter it never desynchronises on a heartbeat or a missing ``id:``.
Lines end only at CR, LF or CRLF, as the standard says: httpx's ``aiter_lines``
also splits at U+2028, U+0085 and other separators, which JSON may carry raw
inside a string, and would cut such an event in two.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from typing import NamedTuple


class ServerSentEvent(NamedTuple):
    """One dispatched event (a tuple: made once per token, it must be cheap to build)."""

    event: str
    data: str
    id: str = ""


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncGenerator[ServerSentEvent, None]:
    """Yield the events of a body, given as its chunks (``providers.http.body_chunks`` or ``received_chunks``).

    An event still pending at the end of the body is dispatched too: Coze's own
    recorded streams end without the final blank line.
    """
    event = ""
    event_id = ""
    data: list[str] = []
    async for line in _iter_lines(chunks):
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


async def _iter_lines(chunks: AsyncIterable[bytes]) -> AsyncGenerator[str, None]:
    """The body's lines, split at CR, LF and CRLF only, each decoded as UTF-8."""
    pending = b""
    async for chunk in chunks:
        if pending:
            chunk = pending + chunk
        # bytes.splitlines splits at CR, LF and CRLF only (str.splitlines would split at more).
        lines = chunk.splitlines(keepends=True)
        # An unterminated last line waits for the next chunk; so does one ending in CR, which
        # may be the first half of a CRLF split across chunks.
        pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        for line in lines:
            yield line.rstrip(b"\r\n").decode("utf-8", errors="replace")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", errors="replace")
