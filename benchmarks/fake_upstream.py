"""A fast fake upstream for the benchmarks: Coze chat v3 and OpenAI-compatible chat, on a bare asyncio HTTP/1.1.

- ``POST /v3/chat``: Coze chat v3 SSE (docs/coze-wire.md §2): ``conversation.chat.created``,
  ``in_progress``, N ``conversation.message.delta``, ``message.completed``, ``chat.completed``
  with usage, ``done``.
- ``POST /v1/chat/completions``: OpenAI-compatible, SSE when ``"stream": true`` (a role chunk,
  N content chunks, a finish chunk, a usage chunk, ``[DONE]``), else one ``chat.completion``.

The bot id (Coze) or model (OpenAI) chooses the answer: ``tokens-50-delay-0`` streams 50 tokens,
each in its own write, with 0 ms between two tokens (the first token comes at once). Bodies are
built once per token count and reused, so the fake spends as little CPU as it can per token.

The server is an ``asyncio.Protocol`` that speaks just the HTTP/1.1 its clients send (``Content-Length``
request bodies, keep-alive, chunked responses) and paces the tokens with loop timers, not tasks: it
shares the benchmark machine's cores with the gateway under test, so every CPU-second it spends is theirs.

Run: ``python -m benchmarks.fake_upstream [--port 0]``; prints ``{"port": N}`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import signal
from typing import cast

from benchmarks.common import Plan, raise_fd_limit, token_text
from server.process import tune_garbage_collector

_CHAT_ID = "7382159487131697202"
_CONVERSATION_ID = "7381473525342978089"
_MESSAGE_ID = "7382159494123470858"
_BOT_ID = "7379462189365198898"
_COMPLETION_ID = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
_LOG_ID = "20241210152726467C48D89D6DB2BENCH"
_INPUT_TOKENS = 12


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- Coze chat v3 ------------------------------------------------------------------------------


def _coze_event(event: str, data: object) -> bytes:
    return f"event:{event}\ndata:{_dumps(data)}\n\n".encode()


def _coze_chat(status: str, tokens: int = 0) -> dict[str, object]:
    chat: dict[str, object] = {
        "id": _CHAT_ID,
        "conversation_id": _CONVERSATION_ID,
        "bot_id": _BOT_ID,
        "created_at": 1718792949,
        "last_error": {"code": 0, "msg": ""},
        "status": status,
        "usage": {"token_count": _INPUT_TOKENS + tokens, "output_count": tokens, "input_count": _INPUT_TOKENS},
    }
    if status == "completed":
        chat["completed_at"] = 1718792950
    return chat


def _coze_message(content: str) -> dict[str, object]:
    return {
        "id": _MESSAGE_ID,
        "conversation_id": _CONVERSATION_ID,
        "bot_id": _BOT_ID,
        "role": "assistant",
        "type": "answer",
        "content": content,
        "content_type": "text",
        "chat_id": _CHAT_ID,
    }


@functools.lru_cache(maxsize=64)
def coze_stream(tokens: int) -> tuple[bytes, tuple[bytes, ...], bytes]:
    """The Coze chat stream of ``tokens`` tokens: (head, one piece per token, tail)."""
    head = _coze_event("conversation.chat.created", _coze_chat("created")) + _coze_event(
        "conversation.chat.in_progress", _coze_chat("in_progress")
    )
    pieces = tuple(_coze_event("conversation.message.delta", _coze_message(token_text(i))) for i in range(tokens))
    answer = "".join(token_text(i) for i in range(tokens))
    tail = (
        _coze_event("conversation.message.completed", _coze_message(answer))
        + _coze_event("conversation.chat.completed", _coze_chat("completed", tokens))
        + b'event:done\ndata:"[DONE]"\n\n'
    )
    return head, pieces, tail


# --- OpenAI-compatible -------------------------------------------------------------------------


def _openai_chunk(delta: dict[str, object], finish_reason: str | None = None) -> dict[str, object]:
    return {
        "id": _COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_f9f4fb6dbf",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _openai_usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": _INPUT_TOKENS, "completion_tokens": tokens, "total_tokens": _INPUT_TOKENS + tokens}


def _sse_data(value: object) -> bytes:
    return f"data: {_dumps(value)}\n\n".encode()


@functools.lru_cache(maxsize=64)
def openai_stream(tokens: int) -> tuple[bytes, tuple[bytes, ...], bytes]:
    """The OpenAI chat.completion.chunk stream of ``tokens`` tokens: (head, one piece per token, tail)."""
    head = _sse_data(_openai_chunk({"role": "assistant", "content": "", "refusal": None}))
    pieces = tuple(_sse_data(_openai_chunk({"content": token_text(i)})) for i in range(tokens))
    usage_chunk = {**_openai_chunk({}), "choices": [], "usage": _openai_usage(tokens)}
    tail = _sse_data(_openai_chunk({}, "stop")) + _sse_data(usage_chunk) + b"data: [DONE]\n\n"
    return head, pieces, tail


@functools.lru_cache(maxsize=64)
def openai_completion(tokens: int) -> bytes:
    """The non-streamed chat.completion of ``tokens`` tokens."""
    return _dumps(
        {
            "id": _COMPLETION_ID,
            "object": "chat.completion",
            "created": 1741569952,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(token_text(i) for i in range(tokens))},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _openai_usage(tokens),
        }
    ).encode()


# --- server ------------------------------------------------------------------------------------
#
# Its clients are aiohttp, httpx and Go's net/http. aiohttp's server cost a task, coroutines and
# header objects per request and a sleep's future per token: about twice the CPU of what follows.

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}
# json.dumps' default separators, byte for byte what aiohttp's json_response sent.
_COZE_NOT_STREAMED = json.dumps({"code": 4000, "msg": "the benchmark fake streams only"}).encode()
_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


def _response(status: int, content_type: str, body: bytes, extra: str = "", *, close: bool = False) -> bytes:
    """A whole response with a Content-Length body; ``extra`` is more header lines, each ending in CRLF."""
    connection = "Connection: close\r\n" if close else ""
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n{connection}\r\n"
    ).encode() + body


def _error(status: int, *, close: bool = False, extra: str = "") -> bytes:
    return _response(status, _TEXT, f"{status}: {_REASONS[status]}".encode(), extra, close=close)


def _stream_head(log_header: str, *, close: bool) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        f"{log_header}: {_LOG_ID}\r\nTransfer-Encoding: chunked\r\n{connection}\r\n"
    ).encode()


# Indexed by "close the connection after this response".
_COZE_HEADS = (_stream_head("x-tt-logid", close=False), _stream_head("x-tt-logid", close=True))
_OPENAI_HEADS = (_stream_head("x-request-id", close=False), _stream_head("x-request-id", close=True))


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_Framed = tuple[bytes, tuple[bytes, ...], bytes]


@functools.lru_cache(maxsize=64)
def _framed_coze(tokens: int) -> _Framed:
    """``coze_stream(tokens)`` as HTTP chunks; the tail ends with the zero-length last chunk."""
    head, pieces, tail = coze_stream(tokens)
    return _chunk(head), tuple(_chunk(piece) for piece in pieces), _chunk(tail) + b"0\r\n\r\n"


@functools.lru_cache(maxsize=64)
def _framed_openai(tokens: int) -> _Framed:
    """``openai_stream(tokens)`` as HTTP chunks; the tail ends with the zero-length last chunk."""
    head, pieces, tail = openai_stream(tokens)
    return _chunk(head), tuple(_chunk(piece) for piece in pieces), _chunk(tail) + b"0\r\n\r\n"


@functools.lru_cache(maxsize=64)
def _completion_response(tokens: int, close: bool) -> bytes:
    return _response(200, "application/json", openai_completion(tokens), f"x-request-id: {_LOG_ID}\r\n", close=close)


class _Pacer:
    """Writes the next token of every stream that waits ``delay`` between tokens, on time.

    One loop timer per stream would put thousands of TimerHandles in the loop's heap, and each push
    and pop compares them in Python. A stream is queued ``delay`` after its last write, so the
    streams of one delay come due in the order they were queued: a FIFO is their timetable, and
    one timer, armed for its head, serves them all.
    """

    __slots__ = ("_delay", "_loop", "_queue", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self._queue: collections.deque[tuple[float, _Connection]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, connection: _Connection) -> None:
        """Write ``connection``'s next token ``delay`` from now."""
        due = self._loop.time() + self._delay
        self._queue.append((due, connection))
        if self._timer is None:  # the queue was empty (while _fire runs, it arms the timer itself)
            self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        queue = self._queue
        now = self._loop.time()
        while queue and queue[0][0] <= now:
            queue.popleft()[1].send_piece(self)
        self._timer = self._loop.call_at(queue[0][0], self._fire) if queue else None


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, answers one at a time, keeps the connection alive.

    A stream in flight waits in a _Pacer, never in a task. Pieces are small and a stream's bytes
    are bounded, so the transport's buffer absorbs a slow reader: the default no-op
    pause_writing/resume_writing are enough.
    """

    __slots__ = (
        "_buffer",
        "_busy",
        "_close_after",
        "_connections",
        "_loop",
        "_next",
        "_pacers",
        "_pending",
        "_pieces",
        "_tail",
        "_timer",
        "_transport",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, connections: set[_Connection], pacers: dict[int, _Pacer]
    ) -> None:
        self._loop = loop
        self._connections = connections
        self._pacers = pacers
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._busy = False  # a response is in flight; later requests wait in the buffer
        self._close_after = False
        self._timer: asyncio.TimerHandle | None = None  # a held-back completion's
        self._pieces: tuple[bytes, ...] = ()
        self._next = 0
        self._tail = b""
        self._pending = b""  # a completion held back until its delay is over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # A stream's entry in its pacer finds no transport when it comes due, and writes nothing.
        self._transport = None
        self._buffer = b""
        self._pieces, self._tail = (), b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        if not self._busy:
            self._serve()

    def eof_received(self) -> bool:
        # The client sends no more: finish the response in flight (keep the transport open for it),
        # then close.
        self._close_after = True
        return self._busy

    def abort(self) -> None:
        """Drop the connection now (shutdown)."""
        if self._transport is not None:
            self._transport.abort()

    # --- requests --------------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer each whole request in the buffer, one at a time, until one has to wait."""
        while not self._busy and self._transport is not None and self._buffer:
            if not self._next_request():
                return

    def _next_request(self) -> bool:
        """Parse and answer the request at the buffer's start; False while it is incomplete."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                self._fail(431)
            return False
        try:
            lines = buffer[:end].decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            self._fail(400)
            return False
        if version != "HTTP/1.1":
            self._fail(505)
            return False
        length = -1  # none yet
        close = expect_continue = False
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                self._fail(400)
                return False
            name = name.strip().lower()
            if name == "content-length":
                value = value.strip()
                # isdecimal: only 0-9 in latin-1 (int() would take "+1", "1_0"); two differing lengths
                # would be a smuggling attempt.
                if not value.isdecimal() or (length >= 0 and int(value) != length):
                    self._fail(400)
                    return False
                length = int(value)
            elif name == "transfer-encoding":
                self._fail(411)  # chunked request bodies: no client of the fake sends them
                return False
            elif name == "connection":
                close = "close" in (token.strip() for token in value.lower().split(","))
            elif name == "expect":
                expect_continue = value.strip().lower() == "100-continue"
        length = max(length, 0)
        if length > _MAX_BODY:
            self._fail(413)
            return False
        start = end + 4
        if len(buffer) < start + length:
            if expect_continue and len(buffer) == start and self._transport is not None:
                self._transport.write(_CONTINUE)
            return False
        body = buffer[start : start + length]
        self._buffer = buffer[start + length :]
        self._busy = True
        self._close_after = self._close_after or close
        self._answer(method, target.partition("?")[0], body)
        return True

    def _answer(self, method: str, path: str, body: bytes) -> None:
        if path == "/v3/chat":
            field = "bot_id"
        elif path == "/v1/chat/completions":
            field = "model"
        else:
            self._send(_error(404, close=self._close_after))
            return
        if method != "POST":
            self._send(_error(405, close=self._close_after, extra="Allow: POST\r\n"))
            return
        try:
            payload = json.loads(body)
        except ValueError:  # UnicodeDecodeError is one too
            self._fail(400)
            return
        if not isinstance(payload, dict):
            self._fail(400)
            return
        plan = Plan.parse(str(payload.get(field, "")))
        stream = bool(payload.get("stream"))
        close = self._close_after
        if field == "bot_id":
            if stream:
                self._stream(_COZE_HEADS[close], _framed_coze(plan.tokens), plan.delay_ms)
            else:
                self._send(_response(400, _JSON, _COZE_NOT_STREAMED, close=close))
        elif stream:
            self._stream(_OPENAI_HEADS[close], _framed_openai(plan.tokens), plan.delay_ms)
        elif plan.delay_ms:
            # A real model takes as long to answer whole as to stream.
            self._pending = _completion_response(plan.tokens, close)
            self._timer = self._loop.call_later(plan.delay_ms * max(0, plan.tokens - 1) / 1000, self._send_pending)
        else:
            self._send(_completion_response(plan.tokens, close))

    # --- responses -------------------------------------------------------------------------------

    def _send(self, response: bytes) -> None:
        """Write a whole response and end it."""
        if self._transport is not None:
            self._transport.write(response)
        self._end()

    def _send_pending(self) -> None:
        self._timer = None
        response, self._pending = self._pending, b""
        self._send(response)
        self._serve()

    def _stream(self, head: bytes, framed: _Framed, delay_ms: int) -> None:
        transport = self._transport
        if transport is None:
            return
        first, pieces, tail = framed
        transport.write(head + first)
        if not delay_ms or not pieces:
            for piece in pieces:
                transport.write(piece)
            transport.write(tail)
            self._end()
            return
        pacer = self._pacers.get(delay_ms)
        if pacer is None:
            pacer = self._pacers[delay_ms] = _Pacer(self._loop, delay_ms / 1000)
        self._pieces, self._next, self._tail = pieces, 0, tail
        self.send_piece(pacer)

    def send_piece(self, pacer: _Pacer) -> None:
        """Write the next token, and queue the one after it (``pacer``'s delay from now)."""
        transport = self._transport
        if transport is None:
            return
        transport.write(self._pieces[self._next])
        self._next += 1
        if self._next < len(self._pieces):
            pacer.add(self)
            return
        transport.write(self._tail)
        self._pieces, self._tail = (), b""
        self._end()
        self._serve()

    def _end(self) -> None:
        """The response is whole: close if asked, else the connection takes the next request."""
        self._busy = False
        if self._close_after and self._transport is not None:
            self._transport.close()

    def _fail(self, status: int) -> None:
        """Refuse a request the fake cannot read; what follows it on the connection is unreadable too."""
        self._buffer = b""
        self._busy = True
        if self._transport is not None:
            self._transport.write(_error(status, close=True))
            self._transport.close()


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    connections: set[_Connection] = set()
    pacers: dict[int, _Pacer] = {}  # by delay_ms
    server = await loop.create_server(lambda: _Connection(loop, connections, pacers), "127.0.0.1", port, backlog=8192)
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": bound}), flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        for connection in list(connections):
            connection.abort()
        await server.wait_closed()


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    raise_fd_limit()
    # It holds thousands of streams in the c5000 scenario: its full collections would pause every
    # one of them, and the pause would read as the gateway's time to first token.
    tune_garbage_collector()
    asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
