"""What operators see: Prometheus metrics after real calls (one worker and two), and the access log.

Every test runs ``python -m server`` as a user does, with a fake OpenAI-compatible upstream
(which reports usage), and reads ``/metrics`` and the log the way Prometheus and a log shipper do.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from tests.fakes import openai as fake
from tests.fakes.openai import FakeOpenAI
from tests.gateway_process import GatewayProcess, gateway_env, running_gateway

SERVICE = "aiplatform.v1.AIPlatformService"
PROMPT = "the-prompt-text-that-no-log-may-hold"
SECRET_KEY = "sk-observability-SECRET-4f1c2a"
_METRICS_PORT = re.compile(rb"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def _chat(service: str, *, model: str = "", delay_ms: int = 0) -> pb.StreamChatRequest:
    request = pb.StreamChatRequest(service_name=service, messages=[pb.ChatMessage(role="user", content=PROMPT)])
    if model:
        request.parameters.update({"model": model})
    if delay_ms:
        request.parameters.update({"delay_ms": delay_ms})
    return request


@asynccontextmanager
async def observed_gateway(
    tmp_path: Path, upstream: FakeOpenAI, **env: str
) -> AsyncIterator[tuple[GatewayProcess, int]]:
    """A gateway process with metrics on a free port and the fake upstream as its ``openai`` service."""
    variables = gateway_env(
        AIP_METRICS_ADDRESS="127.0.0.1:0",
        OPENAI_API_KEY=upstream.api_key,
        OPENAI_BASE_URL=upstream.base_url,
        OPENAI_DEFAULT_MODEL=fake.MODEL_NORMAL,
        **env,
    )
    async with running_gateway(variables, tmp_path) as process:
        yield process, int((await process.find_in_log(_METRICS_PORT.pattern)).group(1))


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by name and sorted labels."""

    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(fetch)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _grpc(method: str, kind: str, **more: str) -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method, **more}


async def _calls(channel: grpc.aio.Channel) -> None:
    """The traffic the metrics tests count: 2 OK streams, 1 OK unary, a NOT_FOUND, an upstream failure."""
    stub = pb_grpc.AIPlatformServiceStub(channel)
    for service in ("echo", "openai"):
        async for _ in stub.StreamChat(_chat(service)):
            pass
    await stub.Chat(pb.ChatRequest(service_name="openai", messages=[pb.ChatMessage(role="user", content=PROMPT)]))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Chat(pb.ChatRequest(service_name="nope", messages=[pb.ChatMessage(role="user", content="x")]))
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in stub.StreamChat(_chat("openai", model=fake.MODEL_SERVER_ERROR)):
            pass


async def test_metrics_count_real_calls_by_code_tokens_errors_and_streams_in_flight(tmp_path: Path) -> None:
    async with (
        FakeOpenAI() as upstream,
        observed_gateway(tmp_path, upstream) as (process, port),
        process.collected_log(),
    ):
        channel = process.channel
        await _calls(channel)
        # A stream held open shows in flight; cancelled, it is counted CANCELLED and leaves the gauge.
        stub = process.stub
        held = stub.StreamChat(_chat("echo", delay_ms=5000))
        await held.wait_for_connection()
        await asyncio.sleep(0.3)
        during = await _scrape(port)
        held.cancel()
        await asyncio.sleep(0.5)
        after = await _scrape(port)

    assert _value(during, "aiplatform_streams_in_flight", service="echo", provider="echo") == 1
    assert _value(after, "aiplatform_streams_in_flight", service="echo", provider="echo") == 0
    handled = "grpc_server_handled_total"
    assert _value(after, handled, **_grpc("StreamChat", "server_stream", grpc_code="OK")) == 2
    assert _value(after, handled, **_grpc("StreamChat", "server_stream", grpc_code="UNAVAILABLE")) == 1
    assert _value(after, handled, **_grpc("StreamChat", "server_stream", grpc_code="CANCELLED")) == 1
    assert _value(after, handled, **_grpc("Chat", "unary", grpc_code="OK")) == 1
    assert _value(after, handled, **_grpc("Chat", "unary", grpc_code="NOT_FOUND")) == 1
    assert _value(after, "grpc_server_started_total", **_grpc("StreamChat", "server_stream")) == 4
    assert _value(after, "grpc_server_handling_seconds_count", **_grpc("Chat", "unary")) == 2
    # The echo stream sends a message per word and a final one; the OpenAI answer its deltas and one.
    assert _value(after, "grpc_server_msg_sent_total", **_grpc("StreamChat", "server_stream")) >= 4
    openai = {"service": "openai", "provider": "openai"}
    # Usage as the fake reported it, for the OK stream and the OK unary call.
    reported = {"caller": "", "source": "reported"}
    assert _value(after, "aiplatform_tokens_total", **openai, **reported, direction="input") == 2 * fake.PROMPT_TOKENS
    assert (
        _value(after, "aiplatform_tokens_total", **openai, **reported, direction="output") == 2 * fake.COMPLETION_TOKENS
    )
    # The failed call's upstream did no work (a 5xx before any event): no tokens, not even estimated ones.
    estimated = {"caller": "", "source": "estimated"}
    assert _value(after, "aiplatform_tokens_total", **openai, **estimated, direction="input") == 0
    # The held echo stream, cancelled: its input counts, estimated (the upstream had it).
    echo = {"service": "echo", "provider": "echo"}
    assert _value(after, "aiplatform_tokens_total", **echo, **estimated, direction="input") > 0
    assert _value(after, "aiplatform_upstream_errors_total", **openai, reason="UPSTREAM_UNAVAILABLE") == 1
    assert _value(after, "aiplatform_time_to_first_token_seconds_count", **openai) == 1
    assert _value(after, "aiplatform_upstream_request_seconds_count", **openai) == 3
    # A caller's unknown service name is no label value.
    assert not any(("service", "nope") in labels for _, labels in after)


async def test_two_workers_are_scraped_as_one_gateway(tmp_path: Path) -> None:
    calls_per_channel, channels = 3, 6
    async with (
        FakeOpenAI() as upstream,
        observed_gateway(tmp_path, upstream, AIP_WORKERS="2") as (process, port),
        process.collected_log(),
    ):
        # Connections, not calls, are spread over the workers: several channels reach both.
        for _ in range(channels):
            async with grpc.aio.insecure_channel(process.target) as channel:
                stub = pb_grpc.AIPlatformServiceStub(channel)
                for _ in range(calls_per_channel):
                    async for _ in stub.StreamChat(_chat("openai")):
                        pass
        samples = await _scrape(port)

    total = calls_per_channel * channels
    assert _value(samples, "grpc_server_handled_total", **_grpc("StreamChat", "server_stream", grpc_code="OK")) == total
    tokens = _value(
        samples,
        "aiplatform_tokens_total",
        service="openai",
        provider="openai",
        caller="",
        direction="output",
        source="reported",
    )
    assert tokens == total * fake.COMPLETION_TOKENS


def _json_lines(log: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log if line.strip()]


async def test_the_json_access_log_has_one_line_per_call_with_the_request_id_it_returned(tmp_path: Path) -> None:
    async with (
        FakeOpenAI(api_key=SECRET_KEY) as upstream,
        observed_gateway(tmp_path, upstream, AIP_LOG_FORMAT="json", AIP_LOG_LEVEL="DEBUG") as (process, _),
        process.collected_log() as log,
    ):
        stub = process.stub
        given = stub.StreamChat(_chat("openai"), metadata=(("x-request-id", "caller-req-42"),))
        async for _ in given:
            pass
        generated = stub.StreamChat(_chat("openai", model=fake.MODEL_ECHO_AUTH))
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in generated:
                pass
        returned_given = dict(await given.initial_metadata())["x-request-id"]
        returned_generated = dict(await generated.initial_metadata())["x-request-id"]

    lines = _json_lines(log)  # every line is JSON, or this raises
    access = {line["request_id"]: line for line in lines if line["logger"] == "aiplatform.access"}
    assert returned_given == "caller-req-42"
    assert re.fullmatch(r"[0-9a-f]{32}", str(returned_generated))
    ok, failed = access["caller-req-42"], access[str(returned_generated)]
    assert ok["method"] == "StreamChat" and ok["service"] == "openai" and ok["provider"] == "openai"
    assert ok["code"] == "OK" and ok["input_tokens"] == fake.PROMPT_TOKENS
    assert ok["output_tokens"] == fake.COMPLETION_TOKENS
    assert ok["ttft_ms"] is not None and ok["duration_ms"] >= ok["ttft_ms"] >= 0
    assert failed["code"] == "INVALID_ARGUMENT" and failed["reason"] == "UPSTREAM_INVALID_REQUEST"
    assert failed["upstream_log_id"].startswith("req_")
    # Neither the prompt nor the upstream key (which the fake echoed in its error) is in any line.
    text = "\n".join(line.decode() for line in log)
    assert PROMPT not in text
    assert SECRET_KEY not in text


async def test_the_text_access_log_is_one_readable_line_per_call(tmp_path: Path) -> None:
    async with (
        FakeOpenAI() as upstream,
        observed_gateway(tmp_path, upstream) as (process, _),
        process.collected_log() as log,
    ):
        stub = process.stub
        await stub.Chat(
            pb.ChatRequest(service_name="echo", messages=[pb.ChatMessage(role="user", content=PROMPT)]),
            metadata=(("x-request-id", "text-req-7"),),
        )

    lines = [line.decode() for line in log if b"aiplatform.access" in line]
    assert len(lines) == 1
    assert re.search(r"INFO aiplatform\.access: Chat echo/echo OK [\d.]+ ms .*request_id=text-req-7", lines[0])
    assert PROMPT not in "".join(line.decode() for line in log)
