"""The load generator: grpc.aio calls (and aiohttp calls straight to the fake upstream), in its own process.

Two commands:

- ``runs``: reads ``{"targets": {...}, "runs": [...], "fake_pid": N}`` as JSON on stdin and runs
  each closed-loop load in turn (``concurrency`` callers, each starting its next call when the
  last one ended, until ``duration`` seconds or ``max_calls`` calls), after a warm-up of the same
  load. For each it prints one JSON line: calls, tokens, time to first token, latency, and the
  CPU seconds the target's server process (and the fake upstream) spent on exactly those calls,
  from /proc/<pid>/stat read just before the first and just after the last call.
- ``swarm``: opens ``--count`` streams spread evenly over ``--ramp`` seconds from ``--start-at``
  (a wall-clock time, so several client processes start together), holds them all, and prints
  one record per stream: start, time to first token, end, tokens, status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from benchmarks.common import Plan, cpu_seconds, percentile, raise_fd_limit
from server.process import tune_garbage_collector

_PROMPT = "Tell me something in fifty tokens."
_CALL_TIMEOUT = 30.0
_HEADERS = {"Authorization": "Bearer bench-key"}


@dataclass(slots=True)
class CallResult:
    """One call as the client saw it."""

    ok: bool
    latency: float
    ttft: float | None = None
    tokens: int = 0
    error: str = ""


@dataclass(slots=True)
class Tally:
    """The calls of one measured load."""

    results: list[CallResult] = field(default_factory=list)

    def summary(self, expected_tokens: int, streaming: bool) -> dict[str, Any]:
        ok = [result for result in self.results if result.ok]
        errors: dict[str, int] = {}
        for result in self.results:
            if not result.ok:
                errors[result.error] = errors.get(result.error, 0) + 1
        ttfts = [result.ttft for result in ok if result.ttft is not None]
        latencies = [result.latency for result in ok]
        summary: dict[str, Any] = {
            "calls": len(self.results),
            "ok": len(ok),
            "errors": errors,
            "tokens": sum(result.tokens for result in ok),
            "latency_p50_ms": _ms(percentile(latencies, 0.5)),
            "latency_p99_ms": _ms(percentile(latencies, 0.99)),
        }
        if streaming:
            summary["short_streams"] = sum(1 for result in ok if result.tokens != expected_tokens)
            summary["ttft_p50_ms"] = _ms(percentile(ttfts, 0.5))
            summary["ttft_p99_ms"] = _ms(percentile(ttfts, 0.99))
        return summary


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _parameters(key: str, plan: Plan) -> struct_pb2.Struct:
    parameters = struct_pb2.Struct()
    parameters.update({key: plan.name})
    return parameters


# --- one call per kind of target ----------------------------------------------------------------

Caller = Callable[[], Awaitable[CallResult]]


def stream_chat_request(service: str, key: str, plan: Plan) -> pb.StreamChatRequest:
    """The streaming request every gRPC caller sends (the Go swarm too, serialised)."""
    return pb.StreamChatRequest(
        service_name=service,
        messages=[pb.ChatMessage(role="user", content=_PROMPT)],
        parameters=_parameters(key, plan),
        user_id="bench-user",
    )


def grpc_stream_caller(
    stub: pb_grpc.AIPlatformServiceStub, service: str, key: str, plan: Plan, timeout: float = _CALL_TIMEOUT
) -> Caller:
    request = stream_chat_request(service, key, plan)

    async def call() -> CallResult:
        start = time.perf_counter()
        first: float | None = None
        tokens = 0
        try:
            async for response in stub.StreamChat(request, timeout=timeout):
                if response.delta:
                    if first is None:
                        first = time.perf_counter()
                    tokens += 1
        except grpc.aio.AioRpcError as error:
            return CallResult(False, time.perf_counter() - start, error=error.code().name)
        end = time.perf_counter()
        return CallResult(True, end - start, None if first is None else first - start, tokens)

    return call


def grpc_unary_caller(stub: pb_grpc.AIPlatformServiceStub, service: str, key: str, plan: Plan) -> Caller:
    request = pb.ChatRequest(
        service_name=service,
        messages=[pb.ChatMessage(role="user", content=_PROMPT)],
        parameters=_parameters(key, plan),
        user_id="bench-user",
    )

    async def call() -> CallResult:
        start = time.perf_counter()
        try:
            response = await stub.Chat(request, timeout=_CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return CallResult(False, time.perf_counter() - start, error=error.code().name)
        return CallResult(True, time.perf_counter() - start, tokens=response.content.count(" "))

    return call


# What marks one token in the fake upstream's bytes (benchmarks/fake_upstream.py).
_TOKEN_MARKERS = {"openai": b'"delta":{"content":"', "coze": b"event:conversation.message.delta"}


def direct_request(base_url: str, path: str, plan: Plan, *, stream: bool) -> tuple[str, dict[str, Any], bytes]:
    """The URL, JSON body and token marker of a call straight to the fake upstream."""
    if path == "coze":
        url = f"{base_url}/v3/chat?conversation_id="
        body: dict[str, Any] = {
            "bot_id": plan.name,
            "user_id": "bench-user",
            "additional_messages": [{"role": "user", "type": "question", "content": _PROMPT, "content_type": "text"}],
            "stream": True,
            "auto_save_history": True,
        }
    else:
        url = f"{base_url}/v1/chat/completions"
        body = {"model": plan.name, "messages": [{"role": "user", "content": _PROMPT}], "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
    return url, body, _TOKEN_MARKERS[path]


def direct_caller(session: aiohttp.ClientSession, base_url: str, path: str, plan: Plan, *, stream: bool) -> Caller:
    """A call straight to the fake upstream: the reference for time to first token and answer time.

    Tokens are counted by a byte search per chunk, not parsed, so the client stays far cheaper
    than the upstream's output rate and its own queueing does not inflate the reference.
    """
    url, body, marker = direct_request(base_url, path, plan, stream=stream)

    async def call() -> CallResult:
        start = time.perf_counter()
        first: float | None = None
        tokens = 0
        try:
            async with session.post(url, json=body, headers=_HEADERS) as response:
                if path == "openai" and not stream:
                    payload = json.loads(await response.read())
                    tokens = payload["choices"][0]["message"]["content"].count(" ")
                else:
                    tail = b""
                    async for chunk in response.content.iter_any():
                        # A marker may straddle two chunks: search the end of the previous one too.
                        window = tail + chunk
                        found = window.count(marker)
                        if found:
                            if first is None:
                                first = time.perf_counter()
                            tokens += found
                        tail = window[1 - len(marker) :]  # shorter than a marker, so none is counted twice
        except aiohttp.ClientError as error:
            return CallResult(False, time.perf_counter() - start, error=type(error).__name__)
        end = time.perf_counter()
        return CallResult(True, end - start, None if first is None else first - start, tokens)

    return call


# --- closed-loop loads --------------------------------------------------------------------------


async def closed_loop(caller: Caller, concurrency: int, duration: float, max_calls: int) -> tuple[Tally, float]:
    """``concurrency`` callers back to back until ``duration`` passed or ``max_calls`` started."""
    tally = Tally()
    started = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal started
        while time.perf_counter() < deadline and started < max_calls:
            started += 1
            tally.results.append(await caller())

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally, time.perf_counter() - begin


class Targets:
    """Channels and sessions to every target, opened once and kept warm across runs."""

    def __init__(self, specs: dict[str, dict[str, Any]]) -> None:
        self.specs = specs
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._session: aiohttp.ClientSession | None = None

    def caller(self, name: str, mode: str, plan: Plan) -> Caller:
        spec = self.specs[name]
        if spec["kind"] == "direct":
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=_CALL_TIMEOUT)
                )
            return direct_caller(self._session, spec["url"], spec["path"], plan, stream=mode == "stream")
        channel = self._channels.get(spec["address"])
        if channel is None:
            channel = self._channels[spec["address"]] = grpc.aio.insecure_channel(spec["address"])
        stub = pb_grpc.AIPlatformServiceStub(channel)
        make = grpc_stream_caller if mode == "stream" else grpc_unary_caller
        return make(stub, spec["service"], spec["param"], plan)

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        if self._session is not None:
            await self._session.close()


async def run_plan(document: dict[str, Any]) -> None:
    targets = Targets(document["targets"])
    fake_pid = document.get("fake_pid")
    try:
        for run in document["runs"]:
            plan = Plan(run.get("tokens", 50), run.get("delay_ms", 0))
            spec = targets.specs[run["target"]]
            caller = targets.caller(run["target"], run["mode"], plan)
            concurrency = run["concurrency"]
            max_calls = run.get("max_calls", 1_000_000)
            if run.get("warmup", 0) > 0:
                await closed_loop(caller, concurrency, run["warmup"], max_calls)
            pid = spec.get("pid")
            cpu_before = cpu_seconds(pid) if pid else None
            fake_before = cpu_seconds(fake_pid) if fake_pid else None
            client_before = _own_cpu()
            tally, elapsed = await closed_loop(caller, concurrency, run["duration"], max_calls)
            result: dict[str, Any] = {**run, "elapsed_s": round(elapsed, 3)}
            result.update(tally.summary(plan.tokens, run["mode"] == "stream"))
            result["calls_per_s"] = round(result["ok"] / elapsed, 1)
            result["tokens_per_s"] = round(result["tokens"] / elapsed, 1)
            result["client_cpu_s"] = round(_own_cpu() - client_before, 3)
            if pid and cpu_before is not None:
                result["server_cpu_s"] = round(cpu_seconds(pid) - cpu_before, 3)
            if fake_pid and fake_before is not None:
                result["fake_cpu_s"] = round(cpu_seconds(fake_pid) - fake_before, 3)
            print(json.dumps(result), flush=True)
            print(
                f"  {run['target']:<16} {run['mode']:<6} c={concurrency:<3} ok={result['ok']:<6} "
                f"tok/s={result['tokens_per_s']:<9} calls/s={result['calls_per_s']:<8} "
                f"cpu={result.get('server_cpu_s')} errors={result['errors'] or ''}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await targets.aclose()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the swarm: many concurrent slow streams ----------------------------------------------------


async def swarm(args: argparse.Namespace) -> None:
    """Open this process's share of the streams on schedule, hold them, write one record per stream."""
    plan = Plan.parse(args.plan)
    channels: list[grpc.aio.Channel] = []
    session: aiohttp.ClientSession | None = None
    if args.direct:
        # No read timeout: a stream is bounded by --timeout as a whole, like a gRPC deadline.
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout())
        caller = direct_caller(session, args.address, args.service, plan, stream=True)
    else:
        channels = [
            grpc.aio.insecure_channel(args.address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(args.channels)
        ]
        for channel in channels:
            await channel.channel_ready()
        callers = [
            grpc_stream_caller(pb_grpc.AIPlatformServiceStub(channel), args.service, args.param, plan, args.timeout)
            for channel in channels
        ]
    records: list[list[Any]] = []
    # Thousands of open streams here too: without this, the client's own full collections
    # would pause it and add their length to the time to first token it measures.
    tune_garbage_collector()

    async def one(index: int) -> None:
        global_index = args.offset + index * args.processes
        start_at = args.start_at + args.ramp * global_index / args.total
        await asyncio.sleep(max(0.0, start_at - time.time()))
        start_wall = time.time()
        try:
            async with asyncio.timeout(args.timeout):
                result = await (caller() if args.direct else callers[index % len(callers)]())
        except TimeoutError:
            result = CallResult(False, args.timeout, error="DEADLINE_EXCEEDED")
        status = "OK" if result.ok else result.error
        records.append([start_wall, result.ttft, start_wall + result.latency, result.tokens, status])

    await asyncio.gather(*(one(index) for index in range(args.count)))
    for channel in channels:
        await channel.close()
    if session is not None:
        await session.close()
    report = json.dumps({"records": records, "client_cpu_s": round(_own_cpu(), 3)})
    await asyncio.to_thread(Path(args.output).write_text, report, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("runs", help="run the loads described by the JSON on stdin")
    swarm_parser = commands.add_parser("swarm", help="hold many concurrent streams")
    swarm_parser.add_argument("--address", required=True, help="host:port, or the fake's URL with --direct")
    swarm_parser.add_argument("--direct", action="store_true", help="call the fake upstream straight (aiohttp)")
    swarm_parser.add_argument("--service", required=True, help="the gRPC service, or openai/coze with --direct")
    swarm_parser.add_argument("--param", required=True, help="model or bot_id")
    swarm_parser.add_argument("--plan", default="tokens-10-delay-1000")
    swarm_parser.add_argument("--count", type=int, required=True, help="streams this process opens")
    swarm_parser.add_argument("--offset", type=int, default=0, help="this process's index")
    swarm_parser.add_argument("--processes", type=int, default=1, help="client processes in all")
    swarm_parser.add_argument("--total", type=int, required=True, help="streams over all processes")
    swarm_parser.add_argument("--ramp", type=float, default=3.0, help="seconds over which the streams start")
    swarm_parser.add_argument("--start-at", type=float, required=True, help="wall-clock time of the first start")
    swarm_parser.add_argument("--channels", type=int, default=8)
    swarm_parser.add_argument("--timeout", type=float, default=60.0, help="each stream's deadline")
    swarm_parser.add_argument("--output", required=True, help="file the JSON records are written to")
    args = parser.parse_args()
    raise_fd_limit()
    if args.command == "runs":
        asyncio.run(run_plan(json.load(sys.stdin)))
    else:
        asyncio.run(swarm(args))


if __name__ == "__main__":
    main()
