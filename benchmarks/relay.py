"""The baselines the gateway is measured against, each a tiny grpc.aio server of the same API.

- ``relay``: the "minimal relay" (grpc.aio + aiohttp client). StreamChat and Chat relay the
  fake upstream with the least work a correct relay can do: one shared aiohttp session, the
  SSE read line by line, one ``json.loads`` per event, one proto message per token. No
  validation, no timeouts, no retries, no error mapping. Service ``openai`` relays
  ``/v1/chat/completions``, service ``coze`` relays ``/v3/chat``.
- ``bare``: a grpc.aio stream with no upstream at all (the ceiling): StreamChat yields the
  tokens the model parameter asks for (``tokens-50-delay-0``), Chat answers them whole.

``--process-tuning`` gives the relay the gateway's start-up measures on its process
(``server/process.py``: room for its descriptors, the tuned garbage collector): the
``baseline-tuned`` reference, which tells the gateway's work per call apart from pauses a
plain Python process takes under load and the gateway no longer does.

Run: ``python -m benchmarks.relay {relay,bare} [--upstream URL] [--process-tuning]``; prints ``{"port": N}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from benchmarks.common import Plan, raise_fd_limit, token_text

Context = grpc.aio.ServicerContext[Any, Any]
_HEADERS = {"Authorization": "Bearer bench-key"}


def _plan_name(request: pb.StreamChatRequest | pb.ChatRequest) -> str:
    fields = request.parameters.fields
    for key in ("model", "bot_id"):
        if key in fields:
            return fields[key].string_value
    return ""


def _usage(prompt: int, completion: int) -> pb.Usage:
    return pb.Usage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)


class MinimalRelay(pb_grpc.AIPlatformServiceServicer):
    """StreamChat and Chat relayed from the fake upstream with the least work possible."""

    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self._upstream = upstream.rstrip("/")
        self._session = session

    async def StreamChat(self, request: pb.StreamChatRequest, context: Context) -> AsyncIterator[pb.StreamChatResponse]:
        events = self._coze(request) if request.service_name == "coze" else self._openai(request, stream=True)
        async for message in events:
            yield message

    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        if request.service_name == "coze":
            content: list[str] = []
            final = pb.StreamChatResponse()
            async for message in self._coze(request):
                if message.delta:
                    content.append(message.delta)
                else:
                    final = message
            return pb.ChatResponse(
                content="".join(content),
                usage=final.usage,
                conversation_id=final.conversation_id,
                chat_id=final.chat_id,
                finish_reason=final.finish_reason,
            )
        async with self._session.post(
            f"{self._upstream}/v1/chat/completions", json=self._openai_body(request, stream=False), headers=_HEADERS
        ) as response:
            payload = json.loads(await response.read())
        choice = payload["choices"][0]
        usage = payload["usage"]
        return pb.ChatResponse(
            content=choice["message"]["content"],
            chat_id=payload["id"],
            finish_reason=pb.FINISH_REASON_STOP,
            usage=_usage(usage["prompt_tokens"], usage["completion_tokens"]),
        )

    @staticmethod
    def _openai_body(request: pb.StreamChatRequest | pb.ChatRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": _plan_name(request),
            "messages": [{"role": message.role, "content": message.content} for message in request.messages],
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def _openai(
        self, request: pb.StreamChatRequest | pb.ChatRequest, *, stream: bool
    ) -> AsyncIterator[pb.StreamChatResponse]:
        final = pb.StreamChatResponse(finish_reason=pb.FINISH_REASON_STOP)
        async with self._session.post(
            f"{self._upstream}/v1/chat/completions", json=self._openai_body(request, stream=stream), headers=_HEADERS
        ) as response:
            # Read to the end of the body (past [DONE]) so the connection goes back to the pool.
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                choices = chunk["choices"]
                if choices:
                    content = choices[0]["delta"].get("content")
                    if content:
                        yield pb.StreamChatResponse(delta=content)
                    continue
                usage = chunk.get("usage")
                if usage:
                    final.chat_id = chunk["id"]
                    final.usage.CopyFrom(_usage(usage["prompt_tokens"], usage["completion_tokens"]))
        yield final

    async def _coze(self, request: pb.StreamChatRequest | pb.ChatRequest) -> AsyncIterator[pb.StreamChatResponse]:
        body = {
            "bot_id": _plan_name(request),
            "user_id": request.user_id or "bench",
            "additional_messages": [
                {"role": message.role, "type": "question", "content": message.content, "content_type": "text"}
                for message in request.messages
            ],
            "stream": True,
            "auto_save_history": True,
        }
        final = pb.StreamChatResponse(finish_reason=pb.FINISH_REASON_STOP)
        event = b""
        async with self._session.post(
            f"{self._upstream}/v3/chat", params={"conversation_id": ""}, json=body, headers=_HEADERS
        ) as response:
            async for line in response.content:
                if line.startswith(b"event:"):
                    event = line[6:].strip()
                elif not line.startswith(b"data:"):
                    continue
                elif event == b"conversation.message.delta":
                    message = json.loads(line[5:])
                    if message.get("type") == "answer" and message.get("content"):
                        yield pb.StreamChatResponse(delta=message["content"])
                elif event == b"conversation.chat.completed":
                    chat = json.loads(line[5:])
                    usage = chat.get("usage") or {}
                    final.conversation_id = chat["conversation_id"]
                    final.chat_id = chat["id"]
                    final.usage.CopyFrom(_usage(usage.get("input_count", 0), usage.get("output_count", 0)))
        yield final


class BareStream(pb_grpc.AIPlatformServiceServicer):
    """No upstream: the tokens come from a loop, so only grpc.aio's own cost is left."""

    async def StreamChat(self, request: pb.StreamChatRequest, context: Context) -> AsyncIterator[pb.StreamChatResponse]:
        plan = Plan.parse(_plan_name(request))
        delay = plan.delay_ms / 1000
        for index in range(plan.tokens):
            if delay and index:
                await asyncio.sleep(delay)
            yield pb.StreamChatResponse(delta=token_text(index))
        yield pb.StreamChatResponse(finish_reason=pb.FINISH_REASON_STOP, usage=_usage(12, plan.tokens))

    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        plan = Plan.parse(_plan_name(request))
        return pb.ChatResponse(
            content="".join(token_text(index) for index in range(plan.tokens)),
            finish_reason=pb.FINISH_REASON_STOP,
            usage=_usage(12, plan.tokens),
        )


async def _serve(mode: str, upstream: str, port: int, process_tuning: bool) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    session: aiohttp.ClientSession | None = None
    if mode == "relay":
        # No connection cap, like the gateway's pools at the sizes measured here.
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout())
        pb_grpc.add_AIPlatformServiceServicer_to_server(MinimalRelay(upstream, session), server)
    else:
        pb_grpc.add_AIPlatformServiceServicer_to_server(BareStream(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    if process_tuning:
        from server.process import tune_garbage_collector

        tune_garbage_collector()  # after start-up, as the gateway does
    print(json.dumps({"port": bound}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop(0.5)
        if session is not None:
            await session.close()


def main() -> None:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("relay", "bare"))
    parser.add_argument("--upstream", default="", help="the fake upstream's base URL (relay mode)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--process-tuning", action="store_true", help="the gateway's start-up measures on this process too"
    )
    args = parser.parse_args()
    if args.mode == "relay" and not args.upstream:
        parser.error("relay mode needs --upstream")
    raise_fd_limit()
    if args.process_tuning:
        # Imported here: the minimal relay stays a plain process, with no module of the gateway's
        # among the objects its collector walks. 6,000: AIP_MAX_CALLS_IN_FLIGHT's default.
        from server.process import descriptors_needed, make_room_for_descriptors

        make_room_for_descriptors(descriptors_needed(6000))
    asyncio.run(_serve(args.mode, args.upstream, args.port, args.process_tuning))


if __name__ == "__main__":
    main()
