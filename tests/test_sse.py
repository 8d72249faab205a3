"""The SSE reader on its own: line ends, chunk boundaries, comments and multi-line data."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from providers.sse import ServerSentEvent, iter_sse


async def _events(*chunks: bytes) -> list[ServerSentEvent]:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return [event async for event in iter_sse(httpx.Response(200, content=body()).aiter_bytes())]


async def test_separators_json_may_carry_raw_do_not_end_a_line() -> None:
    data = '{"text":"a\u2028b\u2029c\x85d\x1ce\x0bf"}'
    (event,) = await _events(f"event: Message\ndata: {data}\n\n".encode())
    assert (event.event, event.data) == ("Message", data)


@pytest.mark.parametrize("split", range(1, 24))
async def test_any_chunk_boundary_gives_the_same_events(split: int) -> None:
    body = b'id: 7\r\nevent: Message\r\ndata: {"a":1}\r\n\r\ndata: x\r\n\r\n'
    events = await _events(body[:split], body[split:])
    assert events == [ServerSentEvent("Message", '{"a":1}', "7"), ServerSentEvent("message", "x", "7")]


async def test_comments_are_skipped_and_data_lines_join() -> None:
    events = await _events(b": ping\n\ndata: one\ndata:two\n\n", "data: 你好".encode())
    assert [(event.event, event.data) for event in events] == [("message", "one\ntwo"), ("message", "你好")]


async def test_a_character_split_across_chunks_arrives_whole() -> None:
    encoded = "data: 你好\n\n".encode()
    events = await _events(encoded[:8], encoded[8:])
    assert events[0].data == "你好"
