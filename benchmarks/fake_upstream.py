"""A fast fake upstream for the benchmarks: Coze chat v3 and OpenAI-compatible chat, over aiohttp.

- ``POST /v3/chat``: Coze chat v3 SSE (docs/coze-wire.md §2): ``conversation.chat.created``,
  ``in_progress``, N ``conversation.message.delta``, ``message.completed``, ``chat.completed``
  with usage, ``done``.
- ``POST /v1/chat/completions``: OpenAI-compatible, SSE when ``"stream": true`` (a role chunk,
  N content chunks, a finish chunk, a usage chunk, ``[DONE]``), else one ``chat.completion``.

The bot id (Coze) or model (OpenAI) chooses the answer: ``tokens-50-delay-0`` streams 50 tokens,
each in its own write, with 0 ms between two tokens (the first token comes at once). Bodies are
built once per token count and reused, so the fake spends as little CPU as it can per token.

Run: ``python -m benchmarks.fake_upstream [--port 0]``; prints ``{"port": N}`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal

from aiohttp import web

from benchmarks.common import Plan, raise_fd_limit, token_text
from server.app import tune_garbage_collector

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


async def _stream(
    request: web.Request, body: tuple[bytes, tuple[bytes, ...], bytes], delay_ms: int, log_header: str
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", log_header: _LOG_ID})
    await response.prepare(request)
    head, pieces, tail = body
    await response.write(head)
    delay = delay_ms / 1000
    for index, piece in enumerate(pieces):
        if delay and index:
            await asyncio.sleep(delay)
        await response.write(piece)
    await response.write(tail)
    await response.write_eof()
    return response


async def coze_chat(request: web.Request) -> web.StreamResponse:
    """``POST /v3/chat``: the Coze chat v3 stream the bot id asks for."""
    payload = json.loads(await request.read())
    plan = Plan.parse(str(payload.get("bot_id", "")))
    if not payload.get("stream"):
        return web.json_response({"code": 4000, "msg": "the benchmark fake streams only"}, status=400)
    return await _stream(request, coze_stream(plan.tokens), plan.delay_ms, "x-tt-logid")


async def openai_chat(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``: the stream or completion the model asks for."""
    payload = json.loads(await request.read())
    plan = Plan.parse(str(payload.get("model", "")))
    if not payload.get("stream"):
        if plan.delay_ms:
            await asyncio.sleep(plan.delay_ms * max(0, plan.tokens - 1) / 1000)
        return web.Response(
            body=openai_completion(plan.tokens),
            content_type="application/json",
            headers={"x-request-id": _LOG_ID},
        )
    return await _stream(request, openai_stream(plan.tokens), plan.delay_ms, "x-request-id")


def build_app() -> web.Application:
    """The fake's routes."""
    app = web.Application()
    app.router.add_post("/v3/chat", coze_chat)
    app.router.add_post("/v1/chat/completions", openai_chat)
    return app


async def _serve(port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=8192, shutdown_timeout=1.0)
    await site.start()
    bound = runner.addresses[0][1]
    print(json.dumps({"port": bound}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


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
