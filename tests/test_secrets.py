"""Secrets stay secret: no caller key, key hash, provider token or Redis password in anything the gateway says.

One ``python -m server`` runs as an operator would run it: caller keys in the AIP_CONFIG file (one
key with limits kept in a Redis that wants a password), JSON logs at DEBUG, Prometheus metrics and
spans printed to stdout, in front of a fake OpenAI and a fake Coze that hold recognisable fake
tokens. The test walks every error path it can reach, then searches every status message,
metadata value and google.rpc detail, the ListServices, reflection and health answers, every log
line, every /metrics label and every span for any 16 characters of any secret: a cut secret is
still a leak. It also checks that each path ran, so that it cannot pass by calling nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio
from google.protobuf import struct_pb2, text_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from aiplatform.v1 import aiplatform_pb2 as pb
from tests.fakes import coze as fake_coze
from tests.fakes import openai as fake_openai
from tests.fakes.coze import FakeCoze
from tests.fakes.openai import FakeOpenAI
from tests.fakes.upstreams import Fault, Upstream
from tests.gateway_process import GatewayProcess, gateway_env, running_gateway
from tests.harness import gateway_for
from tests.redis_server import RedisServer

CALLER_KEY = "aip_SECRET-CALLER-KEY-4b1d7e0c9a2f6385e7"
LIMITED_KEY = "aip_SECRET-LIMITED-KEY-8e2a5c1f7b3d9046c1"
CALLER_KEY_HASH = hashlib.sha256(CALLER_KEY.encode()).hexdigest()
LIMITED_KEY_HASH = hashlib.sha256(LIMITED_KEY.encode()).hexdigest()
OPENAI_TOKEN = "sk-SECRET-UPSTREAM-OPENAI-TOKEN-3f9c1a7e"
COZE_TOKEN = "pat_SECRET-UPSTREAM-COZE-TOKEN-6d2b8e4a"
# Tokens the upstreams refuse: the gateway holds them all the same.
STALE_OPENAI_TOKEN = "sk-SECRET-STALE-OPENAI-TOKEN-1c7e5a9f"
STALE_COZE_TOKEN = "pat_SECRET-STALE-COZE-TOKEN-9a3f6c2e"
REDIS_PASSWORD = "SECRET-REDIS-PASSWORD-5e8b2d7a1c"
# What Redis wants after the test changed its password under the gateway (the gateway never knows it).
ROTATED_REDIS_PASSWORD = "SECRET-REDIS-ROTATED-0f4c8a6e2b"

SECRETS = {
    "caller key": CALLER_KEY,
    "limited caller key": LIMITED_KEY,
    "caller key hash": CALLER_KEY_HASH,
    "limited caller key hash": LIMITED_KEY_HASH,
    "OpenAI token": OPENAI_TOKEN,
    "Coze token": COZE_TOKEN,
    "stale OpenAI token": STALE_OPENAI_TOKEN,
    "stale Coze token": STALE_COZE_TOKEN,
    "Redis password": REDIS_PASSWORD,
    "rotated Redis password": ROTATED_REDIS_PASSWORD,
}
#: The fewest characters of a secret that count as a leak, wherever in the secret they come from.
LEAKED_CHARS = 16

MAIN = (("authorization", f"Bearer {CALLER_KEY}"),)
LIMITED = (("x-api-key", LIMITED_KEY),)
#: Keys that are no configured key, each close to one (the metadata a careless or hostile caller sends).
WRONG_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "the key with its last character changed": (("authorization", f"Bearer {CALLER_KEY[:-1]}0"),),
    "the key with its first character changed": (("authorization", f"Bearer b{CALLER_KEY[1:]}"),),
    "the key's hash as a bearer key": (("authorization", f"Bearer {CALLER_KEY_HASH}"),),
    "the key's hash in x-api-key": (("x-api-key", CALLER_KEY_HASH),),
    "the key in upper case": (("authorization", f"Bearer {CALLER_KEY.upper()}"),),
    "the key with a space inside, in x-api-key": (("x-api-key", f"{CALLER_KEY[:12]} {CALLER_KEY[12:]}"),),
    "the key with the Basic scheme": (("authorization", f"Basic {CALLER_KEY}"),),
    "the key without a scheme": (("authorization", CALLER_KEY),),
    "the first half of the key": (("authorization", f"Bearer {CALLER_KEY[:20]}"),),
    "the limited key with its last character changed": (("x-api-key", f"{LIMITED_KEY[:-1]}x"),),
}

SERVICE = "aiplatform.v1.AIPlatformService"
_METRICS_PORT = rb"metrics on http://127\.0\.0\.1:(\d+)/metrics"
_DETAIL_TYPES = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.QuotaFailure,
)
_CODES = grpc.StatusCode


def _leaked(text: str) -> list[str]:
    """The names of the secrets of which ``text`` holds LEAKED_CHARS characters in a row."""
    return [
        name
        for name, secret in SECRETS.items()
        if any(secret[start : start + LEAKED_CHARS] in text for start in range(len(secret) - LEAKED_CHARS + 1))
    ]


def _text(message: Message) -> str:
    return text_format.MessageToString(message, as_utf8=True)


@dataclass
class Outcome:
    """How one call ended, and everything its caller was told."""

    label: str
    expected: grpc.StatusCode
    code: grpc.StatusCode
    reason: str
    message: str
    #: The responses, the status message, every metadata value and the decoded google.rpc details.
    told: str


def _status_details(value: bytes) -> tuple[str, str]:
    """The text of a ``grpc-status-details-bin`` value, and its ErrorInfo reason."""
    status = status_pb2.Status.FromString(value)
    parts, reason = [str(status.message)], ""
    for packed in status.details:
        kind = next((kind for kind in _DETAIL_TYPES if packed.TypeName() == kind.DESCRIPTOR.full_name), None)
        assert kind is not None, f"a detail of a type the test does not read: {packed.type_url}"
        detail = kind()
        packed.Unpack(detail)
        parts.append(_text(detail))
        if isinstance(detail, error_details_pb2.ErrorInfo):
            reason = str(detail.reason)
    return "\n".join(parts), reason


async def _ended(label: str, expected: grpc.StatusCode, call: Any, received: Iterable[Any] = ()) -> Outcome:
    """The outcome of ``call``, which has ended (or been cancelled)."""
    told = [_text(response) if isinstance(response, Message) else repr(response) for response in received]
    code, message = await call.code(), await call.details() or ""
    told.append(message)
    reason = ""
    for key, value in [*(await call.initial_metadata() or ()), *(await call.trailing_metadata() or ())]:
        if key == "grpc-status-details-bin":
            details, reason = _status_details(value)
            told.append(details)
        else:
            told.append(f"{key}: {value.decode('latin-1') if isinstance(value, bytes) else value}")
    return Outcome(label, expected, code, reason, message, "\n".join(told))


async def _outcome(label: str, expected: grpc.StatusCode, call: Any) -> Outcome:
    """Run ``call`` (unary or streaming) to its end."""
    received: list[Any] = []
    try:
        if isinstance(call, grpc.aio.UnaryUnaryCall):
            received.append(await call)
        else:
            async for response in call:
                received.append(response)
    except grpc.aio.AioRpcError:
        pass  # the status is read from the call
    return await _ended(label, expected, call, received)


def _parameters(**values: Any) -> struct_pb2.Struct:
    parameters = struct_pb2.Struct()
    parameters.update(values)
    return parameters


def _chat(service: str, *, role: str = "user", text: str = "hi", **parameters: Any) -> pb.ChatRequest:
    return pb.ChatRequest(
        service_name=service,
        messages=[pb.ChatMessage(role=role, content=text)] if text else [],
        parameters=_parameters(**parameters),
    )


def _stream(service: str, *, text: str = "hi", **parameters: Any) -> pb.StreamChatRequest:
    return pb.StreamChatRequest(
        service_name=service, messages=[pb.ChatMessage(role="user", content=text)], parameters=_parameters(**parameters)
    )


def _config_file(directory: Path, openai: FakeOpenAI, coze: FakeCoze) -> Path:
    """The AIP_CONFIG file: services whose tokens are refused, unset or hasty, and the two keys."""
    path = directory / "aiplatform.toml"
    path.write_text(
        f"""
[services.openai_stale]
provider = "openai"
base_url = "{openai.base_url}"
api_key_env = "STALE_OPENAI_KEY"
default_model = "{fake_openai.MODEL_NORMAL}"

[services.coze_stale]
provider = "coze"
base_url = "{coze.base_url}"
api_key_env = "STALE_COZE_TOKEN"

[services.openai_unset]
provider = "openai"
base_url = "{openai.base_url}"
api_key_env = "UNSET_OPENAI_KEY"

[services.openai_hasty]
provider = "openai"
base_url = "{openai.base_url}"
api_key_env = "OPENAI_API_KEY"
default_model = "{fake_openai.MODEL_NORMAL}"
first_token_timeout_seconds = 0.3
idle_timeout_seconds = 0.3
max_attempts = 1

[keys.main]
sha256 = "{CALLER_KEY_HASH}"
services = ["openai*", "coze*", "echo"]

[keys.limited]
sha256 = "{LIMITED_KEY_HASH}"
services = ["echo"]
requests_per_minute = 3
tokens_per_minute = 5000
max_concurrent_calls = 1
""",
        encoding="utf-8",
    )
    return path


def _redis(redis_server: RedisServer, password: str | None) -> redis.asyncio.Redis:
    """A client of the test's own, for what only the test may do (set the password, read the ACL log)."""
    return redis.asyncio.Redis.from_url(redis_server.url, password=password)


def _reflection(channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest) -> Any:
    """A reflection call with one request (the call, for `_outcome`)."""
    # Its stubs are typed for a sync channel, and lack the methods.
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
    return stub.ServerReflectionInfo(iter([request]))


async def _scrape(port: int) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(fetch)


# --- the walk ---------------------------------------------------------------------------------------


async def _keys_and_access(process: GatewayProcess) -> list[Outcome]:
    stub = process.stub
    seen = [
        await _outcome(
            "ListServices without a key", _CODES.UNAUTHENTICATED, stub.ListServices(pb.ListServicesRequest())
        ),
        await _outcome("StreamChat without a key", _CODES.UNAUTHENTICATED, stub.StreamChat(_stream("echo"))),
    ]
    for label, metadata in WRONG_KEYS.items():
        seen.append(await _outcome(label, _CODES.UNAUTHENTICATED, stub.Chat(_chat("echo"), metadata=metadata)))
    padded = (("x-api-key", f"  {CALLER_KEY}  "),)  # taken: the spaces around a key are not part of it
    # grpc itself refuses metadata past its hard limit (16 KiB), before the gateway sees the call.
    oversized = (("authorization", f"Bearer {CALLER_KEY}{'x' * 20_000}"),)
    seen += [
        await _outcome("the key with spaces around it", _CODES.OK, stub.Chat(_chat("echo"), metadata=padded)),
        await _outcome(
            "the key in metadata past grpc's limit",
            _CODES.RESOURCE_EXHAUSTED,
            stub.Chat(_chat("echo"), metadata=oversized),
        ),
        await _outcome(
            "a service the key may not call",
            _CODES.PERMISSION_DENIED,
            stub.RunWorkflow(pb.RunWorkflowRequest(service_name="echo_workflow"), metadata=MAIN),
        ),
        await _outcome(
            "an unknown service outside the key's patterns",
            _CODES.PERMISSION_DENIED,
            stub.Chat(_chat("no-such-service"), metadata=MAIN),
        ),
        await _outcome(
            "an unknown service inside the key's patterns",
            _CODES.NOT_FOUND,
            stub.Chat(_chat("openai-no-such-service"), metadata=MAIN),
        ),
        await _outcome(
            "the limited key on a service it may not call",
            _CODES.PERMISSION_DENIED,
            stub.StreamChat(_stream("openai"), metadata=LIMITED),
        ),
    ]
    return seen


async def _invalid_requests(process: GatewayProcess) -> list[Outcome]:
    stub = process.stub
    invalid = _CODES.INVALID_ARGUMENT
    raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = process.channel.unary_unary(
        f"/{SERVICE}/Chat", request_serializer=None, response_deserializer=None
    )
    undecodable = raw(b"\xff\xff\xff\xff", metadata=MAIN)
    return [
        await _outcome("a bad role (OpenAI)", invalid, stub.Chat(_chat("openai", role="wizard"), metadata=MAIN)),
        await _outcome("a bad role (Coze)", invalid, stub.Chat(_chat("coze", role="system"), metadata=MAIN)),
        await _outcome("no messages", invalid, stub.Chat(_chat("echo", text=""), metadata=MAIN)),
        # No pattern of the key admits the empty name.
        await _outcome("no service name", _CODES.PERMISSION_DENIED, stub.Chat(_chat(""), metadata=MAIN)),
        await _outcome("an unknown parameter", invalid, stub.Chat(_chat("echo", colour="blue"), metadata=MAIN)),
        await _outcome(
            "a parameter of a bad type", invalid, stub.Chat(_chat("openai", temperature="hot"), metadata=MAIN)
        ),
        await _outcome(
            "a parameter out of range", invalid, stub.StreamChat(_stream("echo", delay_ms=-5), metadata=MAIN)
        ),
        await _outcome("a chat to a workflow service", invalid, stub.Chat(_chat("coze_workflow"), metadata=MAIN)),
        await _outcome(
            "a workflow without its id",
            invalid,
            stub.RunWorkflow(pb.RunWorkflowRequest(service_name="coze_workflow"), metadata=MAIN),
        ),
        await _outcome(
            "a resume without its event id",
            invalid,
            stub.ResumeWorkflow(pb.ResumeWorkflowRequest(service_name="coze_workflow"), metadata=MAIN),
        ),
        await _outcome("bytes that are no request", invalid, undecodable),
    ]


#: Each fault, the status its StreamChat ends with, and whether a unary Chat is tried too.
_FAULTS: dict[Fault, tuple[grpc.StatusCode, bool]] = {
    Fault.NORMAL: (_CODES.OK, True),
    Fault.ECHO_AUTH: (_CODES.INVALID_ARGUMENT, True),
    Fault.HUGE_ERROR: (_CODES.UNAVAILABLE, True),
    Fault.SERVER_ERROR: (_CODES.UNAVAILABLE, True),
    Fault.BAD_REQUEST: (_CODES.INVALID_ARGUMENT, False),
    Fault.RATE_LIMITED_NO_RETRY_AFTER: (_CODES.RESOURCE_EXHAUSTED, False),
    Fault.FLAKY: (_CODES.OK, False),
    Fault.CUT: (_CODES.UNAVAILABLE, True),
    Fault.CUT_AT_START: (_CODES.UNAVAILABLE, False),
    Fault.ERROR_EVENT: (_CODES.UNAVAILABLE, False),
}
#: Faults only one fake has, by the id that selects them, and the status they end with.
_MORE_FAULTS = {
    "openai": {
        fake_openai.MODEL_RATE_LIMITED: _CODES.RESOURCE_EXHAUSTED,
        fake_openai.MODEL_MISSING: _CODES.NOT_FOUND,
        fake_openai.MODEL_MALFORMED: _CODES.UNAVAILABLE,
    },
    "coze": {
        fake_coze.BOT_RATE_LIMITED: _CODES.RESOURCE_EXHAUSTED,
        fake_coze.BOT_MISSING: _CODES.NOT_FOUND,
        fake_coze.BOT_FAILED: _CODES.UNAVAILABLE,
        fake_coze.BOT_MALFORMED: _CODES.UNAVAILABLE,
    },
}


async def _upstream_failures(process: GatewayProcess, upstreams: Iterable[Upstream]) -> list[Outcome]:
    stub = process.stub
    seen: list[Outcome] = []
    for upstream in upstreams:
        name = upstream.provider
        for fault, (code, unary_too) in _FAULTS.items():
            stream = upstream.stream_request(fault)
            seen.append(await _outcome(f"{name} {fault} stream", code, stub.StreamChat(stream, metadata=MAIN)))
            if unary_too:
                chat = upstream.chat_request(fault)
                seen.append(await _outcome(f"{name} {fault} unary", code, stub.Chat(chat, metadata=MAIN)))
        selector = "bot_id" if name == "coze" else "model"
        for scenario, code in _MORE_FAULTS[name].items():
            request = _stream(name, **{selector: scenario})
            seen.append(await _outcome(f"{name} {scenario} stream", code, stub.StreamChat(request, metadata=MAIN)))
        # A token the upstream refuses: the echo-auth scenario would quote it, were it let through.
        stale = _stream(f"{name}_stale", **{selector: upstream.scenario(Fault.ECHO_AUTH)})
        seen.append(
            await _outcome(
                f"{name} refuses the token", _CODES.FAILED_PRECONDITION, stub.StreamChat(stale, metadata=MAIN)
            )
        )
        stale_chat = _chat(f"{name}_stale", **{selector: upstream.scenario(Fault.NORMAL)})
        seen.append(
            await _outcome(
                f"{name} refuses the token, unary", _CODES.FAILED_PRECONDITION, stub.Chat(stale_chat, metadata=MAIN)
            )
        )
        # The caller's deadline passes while the upstream is silent.
        silent = upstream.stream_request(Fault.STALL_AT_START)
        seen.append(
            await _outcome(
                f"{name} deadline", _CODES.DEADLINE_EXCEEDED, stub.StreamChat(silent, metadata=MAIN, timeout=0.5)
            )
        )
        # The caller cancels a stream under way.
        held = stub.StreamChat(upstream.stream_request(Fault.SLOW), metadata=MAIN)
        first = await held.read()
        held.cancel()
        seen.append(await _ended(f"{name} cancelled", _CODES.CANCELLED, held, [first]))
    workflow = pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake_coze.WORKFLOW_ERROR_EVENT)
    missing = pb.RunWorkflowRequest(service_name="coze_workflow", workflow_id=fake_coze.WORKFLOW_MISSING)
    hasty = _stream("openai_hasty", model=fake_openai.MODEL_STALL)
    seen += [
        await _outcome("a workflow's error event", _CODES.UNAVAILABLE, stub.StreamWorkflow(workflow, metadata=MAIN)),
        await _outcome("a missing workflow", _CODES.NOT_FOUND, stub.RunWorkflow(missing, metadata=MAIN)),
        await _outcome("the upstream goes silent", _CODES.UNAVAILABLE, stub.StreamChat(hasty, metadata=MAIN)),
        await _outcome(
            "a service whose token is not set",
            _CODES.FAILED_PRECONDITION,
            stub.Chat(_chat("openai_unset"), metadata=MAIN),
        ),
    ]
    return seen


async def _limits(process: GatewayProcess, redis_server: RedisServer) -> list[Outcome]:
    """Each limit of the limited key refuses a call, then Redis refuses the gateway's password."""
    stub = process.stub
    exhausted = _CODES.RESOURCE_EXHAUSTED
    seen = [
        await _outcome(
            "more tokens than the key's minute holds",
            exhausted,
            stub.Chat(_chat("echo", max_tokens=6000), metadata=LIMITED),
        )
    ]
    held = stub.StreamChat(_stream("echo", text="one two three four", delay_ms=300), metadata=LIMITED)
    first = await held.read()
    seen.append(await _outcome("a second call at once", exhausted, stub.Chat(_chat("echo"), metadata=LIMITED)))
    held.cancel()
    seen.append(await _ended("the held call, cancelled", _CODES.CANCELLED, held, [first]))
    await asyncio.sleep(0.3)  # the cancelled call's slot is given back in the background
    for attempt in range(8):
        outcome = await _outcome(
            f"call {attempt} within the minute", _CODES.OK, stub.Chat(_chat("echo"), metadata=LIMITED)
        )
        seen.append(outcome)
        if outcome.reason == "CALLER_OVERLOADED":  # a slow machine: the slot is not back yet
            outcome.expected = exhausted
            await asyncio.sleep(0.2)
        elif outcome.reason == "RATE_LIMITED":
            outcome.expected = exhausted
            break
    # Redis wants another password now, and drops every connection: the gateway's reconnects are refused.
    async with _redis(redis_server, REDIS_PASSWORD) as client:
        await client.config_set("requirepass", ROTATED_REDIS_PASSWORD)
        await client.client_kill_filter(_type="normal", skipme=True)
    seen.append(
        await _outcome("Redis drops the connection", _CODES.UNAVAILABLE, stub.Chat(_chat("echo"), metadata=LIMITED))
    )
    # Past the pause the gateway takes after a Redis failure (server/limits.py), it connects again: refused.
    await asyncio.sleep(0.6)
    seen.append(
        await _outcome("Redis refuses the password", _CODES.UNAVAILABLE, stub.Chat(_chat("echo"), metadata=LIMITED))
    )
    return seen


async def _listings(process: GatewayProcess) -> list[Outcome]:
    """ListServices per key, reflection and health: answers that must hold no secret either."""
    channel, stub = process.channel, process.stub
    health: Any = process.health  # its stubs lack the methods
    return [
        await _outcome("ListServices, main key", _CODES.OK, stub.ListServices(pb.ListServicesRequest(), metadata=MAIN)),
        await _outcome(
            "ListServices, limited key", _CODES.OK, stub.ListServices(pb.ListServicesRequest(), metadata=LIMITED)
        ),
        await _outcome(
            "reflection: the services",
            _CODES.OK,
            _reflection(channel, reflection_pb2.ServerReflectionRequest(list_services="")),
        ),
        await _outcome(
            "reflection: the service's file",
            _CODES.OK,
            _reflection(channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)),
        ),
        await _outcome("health", _CODES.OK, health.Check(health_pb2.HealthCheckRequest(service=SERVICE))),
    ]


# --- what the process wrote -----------------------------------------------------------------------


@dataclass
class Output:
    """The process's output: JSON log lines, the spans the console exporter printed, and the rest."""

    log_lines: list[dict[str, Any]]
    spans: list[dict[str, Any]]
    other: list[str]


def _parse_output(text: str) -> Output:
    """Split stdout + stderr: one JSON object per log line; a span is a JSON object printed over several lines."""
    output = Output([], [], [])
    span: list[str] | None = None
    for line in text.splitlines():
        if span is not None:
            span.append(line)
            if line == "}":
                output.spans.append(json.loads("\n".join(span)))
                span = None
        elif line == "{":
            span = [line]
        elif line.startswith("{"):
            output.log_lines.append(json.loads(line))
        elif line.strip():
            output.other.append(line)
    assert span is None, "a span was cut short"
    return output


def _label_values(metrics: str) -> set[str]:
    return {
        value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        for value in sample.labels.values()
    }


def _gateway_environment(
    tmp_path: Path, openai: FakeOpenAI, coze: FakeCoze, redis_server: RedisServer
) -> dict[str, str]:
    redis_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    return gateway_env(
        AIP_CONFIG=str(_config_file(tmp_path, openai, coze)),
        AIP_LOG_FORMAT="json",
        AIP_LOG_LEVEL="DEBUG",
        AIP_METRICS_ADDRESS="127.0.0.1:0",
        AIP_REDIS_URL=redis_url,
        AIP_GRACE_SECONDS="1",
        AIP_TRACING="true",
        OTEL_TRACES_EXPORTER="console",
        OTEL_BSP_SCHEDULE_DELAY="100",
        # Unbuffered: each span is one write, never split by a log line written meanwhile.
        PYTHONUNBUFFERED="1",
        OPENAI_API_KEY=openai.api_key,
        OPENAI_BASE_URL=openai.base_url,
        OPENAI_DEFAULT_MODEL=fake_openai.MODEL_NORMAL,
        COZE_API_TOKEN=coze.token,
        COZE_API_BASE=coze.base_url,
        STALE_OPENAI_KEY=STALE_OPENAI_TOKEN,
        STALE_COZE_TOKEN=STALE_COZE_TOKEN,
    )


async def test_no_secret_reaches_a_caller_a_log_line_a_metric_or_a_span(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with _redis(redis_server, None) as client:
        await client.config_set("requirepass", REDIS_PASSWORD)
    async with FakeOpenAI(api_key=OPENAI_TOKEN) as openai, FakeCoze(token=COZE_TOKEN) as coze:
        env = _gateway_environment(tmp_path, openai, coze, redis_server)
        async with running_gateway(env, tmp_path) as process:
            metrics_port = int((await process.find_in_log(_METRICS_PORT)).group(1))
            async with process.collected_log() as log:
                outcomes = [
                    *await _keys_and_access(process),
                    *await _invalid_requests(process),
                    *await _upstream_failures(process, [Upstream("openai", openai), Upstream("coze", coze)]),
                    *await _limits(process, redis_server),
                    *await _listings(process),
                ]
                await asyncio.sleep(0.3)  # the last calls' metrics and spans
                metrics = await _scrape(metrics_port)
                # Stopped here, so that the spans still batched are printed before the log is read.
                await process.close_channel()
                process.process.terminate()
                await asyncio.wait_for(process.process.wait(), 20)
            assert process.process.stdout is not None
            rest = await process.process.stdout.read()
        async with _redis(redis_server, ROTATED_REDIS_PASSWORD) as client:
            refused_logins = await client.acl_log()
        openai_auth = {request.headers.get("authorization") for request in openai.requests}
        coze_auth = {request.headers.get("authorization") for request in coze.requests}
    text = b"".join([*process.startup_log, *log, rest]).decode()
    output = _parse_output(text)

    # Where any secret, or a piece of one, shows: nowhere.
    leaks = {f"{outcome.label}: what the caller was told": _leaked(outcome.told) for outcome in outcomes} | {
        "the log": _leaked(json.dumps(output.log_lines, ensure_ascii=False)),
        "the spans": _leaked(json.dumps(output.spans, ensure_ascii=False)),
        "the process's other output": _leaked("\n".join(output.other)),
        "the process's whole output": _leaked(text),
        "/metrics": _leaked(metrics),
    }
    assert {where: names for where, names in leaks.items() if names} == {}

    # The test did what it set out to do. Every secret was in play: the upstreams got the tokens,
    # Redis the password (and refused it once rotated), callers the keys.
    assert {f"Bearer {OPENAI_TOKEN}", f"Bearer {STALE_OPENAI_TOKEN}"} <= openai_auth
    assert {f"Bearer {COZE_TOKEN}", f"Bearer {STALE_COZE_TOKEN}"} <= coze_auth
    assert any(entry["reason"] == "auth" for entry in refused_logins), "Redis never refused the gateway's password"
    # Each path ended as it should: the walk reached what it meant to reach.
    assert [(o.label, o.code, o.reason) for o in outcomes if o.code != o.expected] == []
    codes = {outcome.code for outcome in outcomes}
    assert {
        _CODES.OK,
        _CODES.UNAUTHENTICATED,
        _CODES.PERMISSION_DENIED,
        _CODES.RESOURCE_EXHAUSTED,
        _CODES.INVALID_ARGUMENT,
        _CODES.NOT_FOUND,
        _CODES.UNAVAILABLE,
        _CODES.FAILED_PRECONDITION,
        _CODES.CANCELLED,
        _CODES.DEADLINE_EXCEEDED,
    } <= codes
    reasons = {outcome.reason for outcome in outcomes}
    assert {
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "TOKEN_QUOTA_EXCEEDED",
        "CALLER_OVERLOADED",
        "RATE_LIMITED",
        "LIMITS_UNAVAILABLE",
        "INVALID_REQUEST",
        "SERVICE_NOT_FOUND",
        "SERVICE_NOT_READY",
        "UPSTREAM_AUTH_FAILED",
        "UPSTREAM_INVALID_REQUEST",
        "UPSTREAM_NOT_FOUND",
        "UPSTREAM_RATE_LIMITED",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_TIMEOUT",
    } <= reasons
    # The upstreams did quote the tokens (echo-auth), and the gateway took them out.
    for provider in ("openai", "coze"):
        echoed = next(o for o in outcomes if o.label == f"{provider} {Fault.ECHO_AUTH} stream")
        assert "[redacted]" in echoed.message, echoed.message

    # What was collected is there: access lines for both keys, the Redis outage, metrics, spans.
    access = [line for line in output.log_lines if line["logger"] == "aiplatform.access"]
    # One per call that reached the gateway (grpc itself refused the oversized metadata), reflection and health too.
    assert len(access) >= len(outcomes) - 1
    assert {"main", "limited", ""} <= {line["caller"] for line in access}
    assert any("limit store is unreachable" in line["message"] for line in output.log_lines)
    assert {"main", "limited", "RATE_LIMITED", "UPSTREAM_AUTH_FAILED"} <= _label_values(metrics)
    server_spans = [span for span in output.spans if span["kind"] == "SpanKind.SERVER"]
    assert {"main", "limited"} <= {span["attributes"].get("aiplatform.caller") for span in server_spans}
    assert any(span["kind"] == "SpanKind.CLIENT" for span in output.spans), "no upstream request was traced"


def test_a_cut_secret_is_still_found() -> None:
    assert _leaked(f"...{OPENAI_TOKEN[7 : 7 + LEAKED_CHARS]}...") == ["OpenAI token"]
    assert _leaked(f"Bearer {CALLER_KEY_HASH[-LEAKED_CHARS:]}") == ["caller key hash"]
    assert _leaked(OPENAI_TOKEN[: LEAKED_CHARS - 1]) == []


async def test_aip_reflection_false_turns_reflection_off(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = reflection_pb2.ServerReflectionRequest(list_services="")
    async with gateway_for() as gateway:
        on = await _outcome("reflection on", _CODES.OK, _reflection(gateway.channel, listed))
    monkeypatch.setenv("AIP_REFLECTION", "false")
    async with gateway_for() as gateway:
        off = await _outcome("reflection off", _CODES.UNIMPLEMENTED, _reflection(gateway.channel, listed))
        health_stub: Any = gateway.health  # its stubs lack the methods
        health = await health_stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert on.code == _CODES.OK and SERVICE in on.told
    assert off.code == _CODES.UNIMPLEMENTED
    assert health.status == health_pb2.HealthCheckResponse.SERVING
