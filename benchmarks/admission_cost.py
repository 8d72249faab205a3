"""What caller keys and per-key limits cost per call: CPU per call, calls/s and latency, A/B in one process.

``python -m benchmarks.admission_cost`` starts five gateways in this process with the real
``server.app.start_server`` (each serving only the ``echo`` demo service, GC tuned as ``serve()``
tunes it) and a private ``redis-server``:

- ``open``: no caller keys (the baseline), and ``open-copy``, the same again (the noise);
- ``keys``: one key, with no limits (authentication and access only);
- ``memory``: a key with requests_per_minute, tokens_per_minute and max_concurrent_calls, set too
  high to refuse, in the gateway's memory;
- ``redis``: the same limits in Redis (two Lua scripts per call: admission and settlement).

16 callers in this process call one gateway at a time, ``Chat`` then ``StreamChat``, in rounds of
``--seconds`` that alternate between the gateways (their order rotating each round), so each
ratio compares loads seconds apart. A round's CPU is ``time.process_time`` (every thread of the
process: the callers, the servers and grpc's own) ÷ the calls it completed. Echo calls are the
cheapest there are, so the ratios are the worst case. Then one caller alone, for latency without
queueing, and the admission steps alone (no gRPC): the keys' lookup, and admitting and settling
a call in each store, one call after another. All of it ``--passes`` times (2), each pass
reported on its own; the run stops by itself in under three minutes and stops the servers and
redis-server. The numbers of real runs are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from benchmarks.common import cpu_seconds, percentile
from providers.echo import EchoChatService
from providers.limits import DEFAULT_LIMITS
from providers.registry import ServiceRegistry
from server.app import GatewayServer, start_server
from server.callers import CallerKeys, KeyEntry
from server.limits import CallerLimits, LimitStore, MemoryLimitStore, RedisLimitStore
from server.process import tune_garbage_collector
from server.settings import CozeSettings, GatewaySettings, Settings
from tests.redis_server import RedisServer, running_redis

#: ``open-copy`` is a second gateway identical to ``open``: how far it strays from 1.00 is the run's noise.
VARIANTS = ("open", "open-copy", "keys", "memory", "redis")
METHODS = ("Chat", "StreamChat")
#: The key every caller presents (also to the open gateway, which ignores it: the callers' work is the same).
CALLER_KEY = "aip_admission-cost-benchmark-key-0123456789"
_METADATA = (("authorization", f"Bearer {CALLER_KEY}"),)
#: Limits no load of this benchmark reaches: every call is checked and counted, none refused.
NEVER_REFUSING = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12, "max_concurrent_calls": 10**6}
#: Nine words: Chat answers them in one message, StreamChat in nine deltas and a final message.
_PROMPT = "the quick brown fox jumps over the lazy dog"
_CALL_TIMEOUT = 30.0
# After a round, before its CPU is read: the settlements of its last calls (background tasks,
# a Redis round trip) finish, so they are counted in their own round and not the next one's.
_SETTLE_PAUSE = 0.05
# What an echo call of the prompt reserves (9 input tokens, the default 1,024 reserved output
# tokens) and uses (9 in, 9 out), and about the lease the gateway takes for it.
_RESERVED_TOKENS, _USED_TOKENS, _LEASE_SECONDS = 9 + DEFAULT_LIMITS.reserved_output_tokens, 18, 630.0


def settings_for(variant: str, redis_url: str) -> Settings:
    """The gateway's settings for one variant, as tests/harness.py's make_settings builds them."""
    digest = hashlib.sha256(CALLER_KEY.encode()).hexdigest()
    keys: dict[str, KeyEntry] = {}
    if variant == "keys":
        keys["bench"] = KeyEntry(sha256=digest, services=["*"])
    elif variant in ("memory", "redis"):
        keys["bench"] = KeyEntry(sha256=digest, services=["*"], **NEVER_REFUSING)
    gateway: dict[str, Any] = {"redis_url": redis_url} if variant == "redis" else {}
    return Settings(
        gateway=GatewaySettings(_env_file=None, address="127.0.0.1:0", demo_services=False, **gateway),
        coze=CozeSettings(_env_file=None),
        caller_keys=keys,
    )


Call = Callable[[], Awaitable[None]]


def callers_of(stub: pb_grpc.AIPlatformServiceStub) -> dict[str, Call]:
    """One call of each method; each checks its answer, and a refusal ends the run (AioRpcError)."""
    messages = [pb.ChatMessage(role="user", content=_PROMPT)]
    chat_request = pb.ChatRequest(service_name="echo", messages=messages)
    stream_request = pb.StreamChatRequest(service_name="echo", messages=messages)

    async def chat() -> None:
        response = await stub.Chat(chat_request, metadata=_METADATA, timeout=_CALL_TIMEOUT)
        if response.content != _PROMPT:
            raise AssertionError(f"echo answered {response.content!r}")

    async def stream_chat() -> None:
        received = 0
        async for _response in stub.StreamChat(stream_request, metadata=_METADATA, timeout=_CALL_TIMEOUT):
            received += 1
        if received != len(_PROMPT.split()) + 1:
            raise AssertionError(f"echo streamed {received} messages")

    return {"Chat": chat, "StreamChat": stream_chat}


@dataclass(slots=True)
class Tally:
    """The rounds of one variant, method and concurrency within a pass."""

    calls: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    redis_cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.calls * 1e6

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.wall_seconds

    @property
    def p50_ms(self) -> float:
        p50 = percentile(self.latencies, 0.5)
        assert p50 is not None
        return p50 * 1000


async def load(call: Call, concurrency: int, seconds: float, redis_pid: int | None, tally: Tally) -> None:
    """``concurrency`` callers, each starting its next call when its last one ended, for ``seconds``."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        while (started := time.perf_counter()) < stop_at:
            await call()
            latencies.append(time.perf_counter() - started)

    redis_before = cpu_seconds(redis_pid) if redis_pid is not None else 0.0
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - wall_before
    await asyncio.sleep(_SETTLE_PAUSE)
    tally.cpu_seconds += time.process_time() - cpu_before
    if redis_pid is not None:
        tally.redis_cpu_seconds += cpu_seconds(redis_pid) - redis_before
    tally.wall_seconds += wall
    tally.calls += len(latencies)
    tally.latencies += latencies


Tallies = dict[tuple[str, str, int], Tally]


async def one_pass(
    calls: dict[str, dict[str, Call]], args: argparse.Namespace, redis_pid: int, warm_up: bool = False
) -> Tallies:
    """Alternating rounds: per round, each method on each gateway (the gateways' order rotating)."""
    tallies: Tallies = {}
    plan = [(args.concurrency, args.rounds, args.seconds), (1, args.single_rounds, args.single_seconds)]
    if warm_up:
        plan = [(args.concurrency, 1, 0.5)]
    for concurrency, rounds, seconds in plan:
        for index in range(rounds):
            shift = index % len(VARIANTS)
            order = VARIANTS[shift:] + VARIANTS[:shift]
            for method in METHODS:
                for variant in order:
                    tally = tallies.setdefault((variant, method, concurrency), Tally())
                    pid = redis_pid if variant == "redis" else None
                    await load(calls[variant][method], concurrency, seconds, pid, tally)
    return tallies


def report(tallies: Tallies, concurrency: int) -> str:
    """A Markdown table of one pass: per method and variant, the numbers and their ratios to ``open``."""
    lines = [
        f"| method | gateway | calls | CPU µs/call | ÷ open | calls/s @{concurrency} | ÷ open "
        f"| p50 ms @{concurrency} | p50 ms @1 | redis-server CPU µs/call |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHODS:
        base, base_single = tallies["open", method, concurrency], tallies["open", method, 1]
        for variant in VARIANTS:
            tally, single = tallies[variant, method, concurrency], tallies[variant, method, 1]
            redis = f"{tally.redis_cpu_seconds / tally.calls * 1e6:.0f}" if variant == "redis" else "—"
            lines.append(
                f"| {method} | {variant} | {tally.calls} | {tally.cpu_us_per_call:.0f} "
                f"| {tally.cpu_us_per_call / base.cpu_us_per_call:.3f} | {tally.calls_per_second:.0f} "
                f"| {tally.calls_per_second / base.calls_per_second:.3f} "
                f"| {tally.p50_ms:.2f} ({tally.p50_ms - base.p50_ms:+.2f}) "
                f"| {single.p50_ms:.3f} ({single.p50_ms - base_single.p50_ms:+.3f}) | {redis} |"
            )
    return "\n".join(lines)


async def admission_alone(variant: str, redis: RedisServer, calls: int) -> str:
    """One Markdown row: the admission's steps for ``variant`` alone, ``calls`` times, one after another.

    The steps ``server/admission.py`` takes (the key's lookup and access check; with limits,
    admitting the call and settling it), on the public parts it is made of, without gRPC.
    """
    settings = settings_for(variant, redis.url)
    keys = CallerKeys.from_entries(settings.caller_keys)
    limits: CallerLimits | None = None
    if variant != "keys":
        store: LimitStore = RedisLimitStore(redis.url) if variant == "redis" else MemoryLimitStore()
        limits = CallerLimits(store)
    assert redis.process is not None
    redis_before = cpu_seconds(redis.process.pid)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    try:
        for index in range(calls):
            caller = keys.identify(_METADATA)
            caller.check_access("echo")
            if limits is not None:
                reservation = await limits.admit(caller, f"alone-{index}", _RESERVED_TOKENS, _LEASE_SECONDS)
                assert reservation is not None
                await limits.settle(reservation, _USED_TOKENS)
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    finally:
        if limits is not None:
            await limits.aclose()
    redis_cpu = f"{(cpu_seconds(redis.process.pid) - redis_before) / calls * 1e6:.0f}" if variant == "redis" else "—"
    return f"| {variant} | {calls} | {cpu / calls * 1e6:.1f} | {wall / calls * 1e6:.1f} | {redis_cpu} |"


async def start_gateways(redis_url: str) -> dict[str, GatewayServer]:
    gateways: dict[str, GatewayServer] = {}
    try:
        for variant in VARIANTS:
            registry = ServiceRegistry()
            registry.register(EchoChatService("echo"))
            gateways[variant] = await start_server(settings_for(variant, redis_url), registry)
    except BaseException:
        await stop_gateways(gateways)
        raise
    return gateways


async def stop_gateways(gateways: dict[str, GatewayServer]) -> None:
    for gateway in gateways.values():
        await gateway.stop(0)


async def measure(args: argparse.Namespace, directory: Path) -> None:
    async with running_redis(directory) as redis:
        gateways = await start_gateways(redis.url)
        try:
            await measure_gateways(gateways, redis, args)
        finally:
            await stop_gateways(gateways)


async def measure_gateways(gateways: dict[str, GatewayServer], redis: RedisServer, args: argparse.Namespace) -> None:
    channels = {
        variant: grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") for variant, gateway in gateways.items()
    }
    try:
        calls = {variant: callers_of(pb_grpc.AIPlatformServiceStub(channel)) for variant, channel in channels.items()}
        # As serve() does once the server is up; the warm-up also loads Redis's scripts and fills
        # the channels' and the gateways' caches.
        tune_garbage_collector()
        assert redis.process is not None
        redis_pid = redis.process.pid
        await one_pass(calls, args, redis_pid, warm_up=True)
        for number in range(1, args.passes + 1):
            started = time.strftime("%H:%M:%S")
            tallies = await one_pass(calls, args, redis_pid)
            print(f"\n### Pass {number} ({started}–{time.strftime('%H:%M:%S')}, load {_load()})\n", flush=True)
            print(report(tallies, args.concurrency), flush=True)
            rows = [
                await admission_alone(variant, redis, args.alone_calls // (10 if variant == "redis" else 1))
                for variant in ("keys", "memory", "redis")
            ]
            print(
                "\nThe admission's steps alone, one call after another (no gRPC):\n\n"
                "| gateway | calls | CPU µs/call | wall µs/call | redis-server CPU µs/call |\n"
                "|---|---|---|---|---|\n" + "\n".join(rows),
                flush=True,
            )
    finally:
        for channel in channels.values():
            await channel.close()


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=16, help="callers at once (16)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one round (2 s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per gateway and method in a pass (3)")
    parser.add_argument("--single-seconds", type=float, default=0.75, help="length of a one-caller round (0.75 s)")
    parser.add_argument("--single-rounds", type=int, default=2, help="one-caller rounds per pass (2)")
    parser.add_argument(
        "--alone-calls", type=int, default=20_000, help="calls of the admission's steps alone (20,000; Redis: a tenth)"
    )
    parser.add_argument("--passes", type=int, default=2, help="full alternations, each reported (2)")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH (Debian: apt-get install redis-server; .ci/setup-redis.sh)")
    print(
        f"# admission cost: {os.cpu_count()} CPUs, load {_load()} at start; {args.concurrency} callers, "
        f"{args.rounds} × {args.seconds:g} s rounds per gateway and method, {args.passes} passes",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="admission-cost-") as directory:
        asyncio.run(measure(args, Path(directory)))
    print(f"\nload {_load()} at end", flush=True)


if __name__ == "__main__":
    main()
