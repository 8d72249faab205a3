"""The SSE reader on its own: line ends, chunk boundaries, comments and multi-line data."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.sse import ServerSentEvent, _iter_lines, iter_sse


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


_LINE_ENDS = (b"\n", b"\r", b"\r\n")


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.binary(max_size=12).filter(lambda text: b"\r" not in text and b"\n" not in text),
            st.sampled_from(_LINE_ENDS),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
def test_lines_end_at_cr_lf_and_crlf_wherever_the_chunks_are_cut(
    lines: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    body = b"".join(text + end for text, end in lines)
    # A CR then an LF in two different lines' ends would read as one CRLF; the reference must too.
    expected = [line.decode("utf-8", errors="replace") for line in re.split(rb"\r\n|\r|\n", body)[:-1]]
    bounds = sorted({0, len(body), *(cut for cut in cuts if cut < len(body))})
    chunks = [body[start:end] for start, end in itertools.pairwise(bounds)]

    async def read() -> list[str]:
        async def body_chunks() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        return [line async for line in _iter_lines(body_chunks())]

    assert asyncio.run(read()) == expected
