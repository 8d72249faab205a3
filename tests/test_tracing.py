"""Traces: a server span per RPC, a client span per upstream attempt, and W3C trace context in and out.

A real gateway (in process, port 0) traces into the SDK's in-memory exporter while it talks to the fake
upstreams, which record the ``traceparent`` header each request brought. One test runs ``python -m server``
against a fake OTLP collector, the way an operator turns tracing on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.base import AIService
from server import tracing
from server.settings import GatewaySettings
from tests.fakes import coze as fake_coze
from tests.fakes import openai as fake_openai
from tests.fakes.upstreams import PROVIDERS, Fault, Upstream, answer, collect, open_upstream, until
from tests.gateway_process import failed_start, gateway_env, running_gateway
from tests.harness import gateway_for

PROMPT = "the-prompt-text-that-no-span-may-hold"
STREAM_CHAT = "aiplatform.v1.AIPlatformService/StreamChat"
CHAT = "aiplatform.v1.AIPlatformService/Chat"
# A caller's trace: W3C traceparent "version-trace_id-parent_id-flags".
CALLER_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7
CALLER_TRACEPARENT = f"00-{CALLER_TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(params=PROVIDERS)
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Upstream]:
    """A fake upstream of each provider in turn."""
    async with open_upstream(request.param) as started:
        yield started


@contextlib.asynccontextmanager
async def traced_gateway(
    service: AIService, exporter: InMemorySpanExporter, *, tracing_on: bool = True
) -> AsyncIterator[grpc.aio.Channel]:
    """A gateway serving ``service`` (default ServiceLimits: 3 attempts) whose spans go to ``exporter``."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        async with gateway_for(services=[service], tracer_provider=provider, tracing=tracing_on) as gateway:
            yield gateway.channel
    finally:
        provider.shutdown()


def _parameters(upstream: Upstream, fault: Fault) -> struct_pb2.Struct:
    parameters = struct_pb2.Struct()
    parameters.update({"bot_id" if upstream.provider == "coze" else "model": upstream.scenario(fault)})
    return parameters


def _stream_request(upstream: Upstream, fault: Fault = Fault.NORMAL) -> pb.StreamChatRequest:
    return pb.StreamChatRequest(
        service_name=upstream.service_name,
        messages=[pb.ChatMessage(role="user", content=PROMPT)],
        parameters=_parameters(upstream, fault),
    )


def _chat_request(upstream: Upstream, fault: Fault = Fault.NORMAL) -> pb.ChatRequest:
    return pb.ChatRequest(
        service_name=upstream.service_name,
        messages=[pb.ChatMessage(role="user", content=PROMPT)],
        parameters=_parameters(upstream, fault),
    )


def _log_id(request: Any) -> str:
    """The log id a fake answered ``request`` with (Coze's x-tt-logid, OpenAI's x-request-id)."""
    return str(getattr(request, "log_id", None) or request.request_id)


def _traceparent(trace_id: int, span_id: int) -> str:
    """A traceparent header without its flags (sampled, and with newer SDKs "random trace id" too)."""
    return f"00-{trace_id:032x}-{span_id:016x}"


def _sent_traceparent(request: Any) -> str:
    """The traceparent an upstream request carried, without its flags; they say it was sampled."""
    header = str(request.headers["traceparent"])
    parent, _, flags = header.rpartition("-")
    assert int(flags, 16) & 0x01, f"{header}: not sampled"
    return parent


async def _server_spans(exporter: InMemorySpanExporter, count: int = 1) -> list[ReadableSpan]:
    """The ended SERVER spans, once there are ``count`` (a span ends just after its call's status is sent)."""
    await until(lambda: len(_of_kind(exporter.get_finished_spans(), SpanKind.SERVER)) >= count)
    return _of_kind(exporter.get_finished_spans(), SpanKind.SERVER)


def _of_kind(spans: Sequence[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind == kind]


def _children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """The CLIENT spans whose parent is ``parent``, in the order they started."""
    return sorted(
        (
            span
            for span in _of_kind(spans, SpanKind.CLIENT)
            if span.parent is not None and span.parent.span_id == parent.context.span_id
        ),
        key=lambda span: span.start_time or 0,
    )


def _chat_attempts(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """The CLIENT spans of ``parent``'s chat requests (Coze's /v3/chat, OpenAI's /chat/completions)."""
    return [span for span in _children(spans, parent) if "/chat" in str(dict(span.attributes or {}).get("http.url"))]


def _everything_recorded(spans: Sequence[ReadableSpan]) -> str:
    """Every name, attribute, event and status description of ``spans``, as one text."""
    parts: list[str] = []
    for span in spans:
        parts += [span.name, repr(dict(span.attributes or {})), span.status.description or ""]
        parts += [f"{event.name} {dict(event.attributes or {})!r}" for event in span.events]
        parts.append(repr(dict(span.resource.attributes)))
    return "\n".join(parts)


# --- one server span per RPC, one client span per upstream attempt ------------------------------


async def test_stream_chat_is_a_server_span_with_the_calls_facts_and_a_client_span_per_request(
    upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    async with traced_gateway(upstream.service(), exporter) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        call = stub.StreamChat(_stream_request(upstream))
        responses, error = await collect(call)
        request_id = dict(await call.initial_metadata())["x-request-id"]
    assert error is None
    usage = responses[-1].usage

    (server,) = await _server_spans(exporter)
    assert server.name == STREAM_CHAT
    assert server.parent is None, "no caller trace: the call starts one"
    attributes = dict(server.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert (attributes["rpc.service"], attributes["rpc.method"]) == ("aiplatform.v1.AIPlatformService", "StreamChat")
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert attributes["aiplatform.service"] == upstream.service_name
    assert attributes["aiplatform.provider"] == upstream.provider
    assert (attributes["aiplatform.input_tokens"], attributes["aiplatform.output_tokens"]) == (
        usage.input_tokens,
        usage.output_tokens,
    )
    assert usage.output_tokens > 0
    assert attributes["aiplatform.request_id"] == request_id
    assert server.status.status_code == StatusCode.UNSET

    (chat_request,) = upstream.chat_requests()
    spans = exporter.get_finished_spans()
    attempts = _chat_attempts(spans, server)
    assert len(attempts) == 1
    (attempt,) = attempts
    assert attempt.name == "POST"
    assert attempt.context.trace_id == server.context.trace_id
    assert attributes["aiplatform.upstream_log_id"] == _log_id(chat_request)
    assert dict(attempt.attributes or {})["aiplatform.upstream_log_id"] == _log_id(chat_request)
    assert _sent_traceparent(chat_request) == _traceparent(server.context.trace_id, attempt.context.span_id), (
        "the upstream request continues the call's trace, its parent being the attempt's span"
    )
    # Every request the upstream received (Coze's are not only the chat) was traced and carried the trace.
    assert {request.headers.get("traceparent", "")[3:35] for request in upstream.fake.requests} == {
        f"{server.context.trace_id:032x}"
    }


async def test_unary_chat_is_one_server_span_around_the_whole_call(
    upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    """Chat is served request-streaming behind CallInterceptor; its span is still one SERVER span, named Chat."""
    async with traced_gateway(upstream.service(), exporter) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        response, error = await answer(stub.Chat(_chat_request(upstream)))
    assert error is None and response is not None

    (server,) = await _server_spans(exporter)
    assert server.name == CHAT
    attributes = dict(server.attributes or {})
    assert attributes["aiplatform.service"] == upstream.service_name
    assert attributes["aiplatform.output_tokens"] == response.usage.output_tokens > 0
    clients = _of_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert clients and all(span.parent is not None for span in clients)
    assert {span.parent.span_id for span in clients if span.parent} == {server.context.span_id}
    assert server.start_time is not None and server.end_time is not None
    assert all(
        server.start_time <= (span.start_time or 0) and (span.end_time or 0) <= server.end_time for span in clients
    ), "the server span encloses the upstream requests"


async def test_each_retried_attempt_is_a_client_span_of_its_own(
    upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    upstream.server.flaky_failures = 1  # one 502, then the answer; the default policy retries it
    async with traced_gateway(upstream.service(), exporter) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        _, error = await collect(stub.StreamChat(_stream_request(upstream, Fault.FLAKY)))
    assert error is None

    (server,) = await _server_spans(exporter)
    requests = upstream.chat_requests()
    assert len(requests) == 2
    attempts = _chat_attempts(exporter.get_finished_spans(), server)
    assert [dict(span.attributes or {}).get("http.status_code") for span in attempts] == [502, 200]
    for request, attempt in zip(requests, attempts, strict=True):
        assert _sent_traceparent(request) == _traceparent(server.context.trace_id, attempt.context.span_id)
        assert dict(attempt.attributes or {}).get("aiplatform.upstream_log_id") == _log_id(request)
    assert dict(server.attributes or {})["aiplatform.upstream_log_id"] == _log_id(requests[-1])


# --- the caller's trace ------------------------------------------------------------------------------


async def test_a_callers_traceparent_continues_its_trace_to_the_upstream(
    upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    metadata = (("traceparent", CALLER_TRACEPARENT), ("baggage", "user=someone-the-upstream-must-not-see"))
    async with traced_gateway(upstream.service(), exporter) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        _, error = await collect(stub.StreamChat(_stream_request(upstream), metadata=metadata))
    assert error is None

    (server,) = await _server_spans(exporter)
    assert server.context.trace_id == CALLER_TRACE_ID
    assert server.parent is not None and server.parent.span_id == CALLER_SPAN_ID
    assert server.parent.is_remote
    (chat_request,) = upstream.chat_requests()
    assert chat_request.headers["traceparent"].startswith(f"00-{CALLER_TRACE_ID:032x}-")
    assert "baggage" not in chat_request.headers, "only trace context goes to a third-party upstream"


# --- statuses --------------------------------------------------------------------------------------


async def test_an_upstream_failure_is_an_error_span_with_its_reason_and_log_id(exporter: InMemorySpanExporter) -> None:
    async with open_upstream("openai") as upstream, traced_gateway(upstream.service(), exporter) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        _, error = await collect(stub.StreamChat(_stream_request(upstream, Fault.SERVER_ERROR)))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE

    (server,) = await _server_spans(exporter)
    attributes = dict(server.attributes or {})
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert attributes["aiplatform.reason"] == "UPSTREAM_UNAVAILABLE"
    requests = upstream.chat_requests()
    assert len(requests) == 3, "a 500 before any text is retried, up to the policy's 3 attempts"
    assert len(_children(exporter.get_finished_spans(), server)) == 3
    assert attributes["aiplatform.upstream_log_id"] == _log_id(requests[-1])
    assert (server.status.status_code, server.status.description) == (StatusCode.ERROR, "UPSTREAM_UNAVAILABLE")


async def test_a_callers_mistake_is_not_an_error_span(exporter: InMemorySpanExporter) -> None:
    async with open_upstream("openai") as upstream, traced_gateway(upstream.service(), exporter) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        request = pb.StreamChatRequest(service_name="no-such-service", messages=[pb.ChatMessage(content=PROMPT)])
        _, error = await collect(stub.StreamChat(request))
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND

    (server,) = await _server_spans(exporter)
    attributes = dict(server.attributes or {})
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert attributes["aiplatform.reason"] == "SERVICE_NOT_FOUND"
    assert "aiplatform.service" not in attributes, "a caller's unknown service name is not recorded"
    assert server.status.status_code == StatusCode.UNSET
    assert not _of_kind(exporter.get_finished_spans(), SpanKind.CLIENT)


async def test_a_call_past_its_deadline_ends_its_span_with_deadline_exceeded(exporter: InMemorySpanExporter) -> None:
    """No handler sets this code (grpc ends the call): the span still ends, and says so."""
    async with open_upstream("openai") as upstream, traced_gateway(upstream.service(), exporter) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        _, error = await collect(stub.StreamChat(_stream_request(upstream, Fault.STALL), timeout=0.5))
        assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        (server,) = await _server_spans(exporter)
    attributes = dict(server.attributes or {})
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert server.status.status_code == StatusCode.ERROR


async def test_health_checks_are_not_traced(exporter: InMemorySpanExporter) -> None:
    async with open_upstream("openai") as upstream, traced_gateway(upstream.service(), exporter) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        health: Any = health_pb2_grpc.HealthStub(channel)  # its stubs lack the methods
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await stub.ListServices(pb.ListServicesRequest())
        (server,) = await _server_spans(exporter)
    assert server.name == "aiplatform.v1.AIPlatformService/ListServices"
    assert len(exporter.get_finished_spans()) == 1


# --- what spans never hold -------------------------------------------------------------------------


async def test_no_span_holds_the_prompt_or_a_credential(upstream: Upstream, exporter: InMemorySpanExporter) -> None:
    secret = upstream.fake.token if upstream.provider == "coze" else upstream.fake.api_key  # type: ignore[union-attr]
    async with traced_gateway(upstream.service(), exporter) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        for fault in (Fault.NORMAL, Fault.ECHO_AUTH, Fault.SERVER_ERROR, Fault.BAD_REQUEST):
            await collect(stub.StreamChat(_stream_request(upstream, fault)))
            await answer(stub.Chat(_chat_request(upstream, fault)))
        await _server_spans(exporter, 8)
    recorded = _everything_recorded(exporter.get_finished_spans())
    assert recorded.count("aiplatform.v1.AIPlatformService/") >= 8
    assert PROMPT not in recorded
    assert secret not in recorded
    assert "authorization" not in recorded.lower()


# --- off, and on and off again ---------------------------------------------------------------------


async def test_tracing_off_records_nothing_and_sends_no_traceparent(
    upstream: Upstream, exporter: InMemorySpanExporter
) -> None:
    async with traced_gateway(upstream.service(), exporter, tracing_on=False) as channel:
        stub = pb_grpc.AIPlatformServiceStub(channel)
        assert not _aiohttp_instrumented(), "no instrumentation is installed when tracing is off"
        metadata = (("traceparent", CALLER_TRACEPARENT),)
        _, error = await collect(stub.StreamChat(_stream_request(upstream), metadata=metadata))
    assert error is None
    await asyncio.sleep(0.1)
    assert exporter.get_finished_spans() == ()
    assert upstream.fake.requests
    assert all("traceparent" not in request.headers for request in upstream.fake.requests)


async def test_stopping_a_traced_gateway_undoes_its_instrumentation(exporter: InMemorySpanExporter) -> None:
    propagator = propagate.get_global_textmap()
    async with open_upstream("openai") as upstream:
        async with traced_gateway(upstream.service(), exporter):
            assert _aiohttp_instrumented()
        assert not _aiohttp_instrumented()
        assert propagate.get_global_textmap() is propagator
        # A session made now (any other test's) sends no traceparent.
        async with aiohttp.ClientSession() as session:
            url = f"{upstream.fake.base_url}/chat/completions"
            headers = {"Authorization": f"Bearer {fake_openai.DEFAULT_API_KEY}"}
            async with session.post(url, json={"model": fake_openai.MODEL_NORMAL}, headers=headers) as response:
                await response.read()
    assert "traceparent" not in upstream.fake.requests[-1].headers


def _aiohttp_instrumented() -> bool:
    return hasattr(aiohttp.ClientSession.__init__, "__wrapped__")


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "on"),
    [
        ({}, False),
        ({"AIP_TRACING": "true"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "AIP_TRACING": "false"}, False),
    ],
)
def test_tracing_is_on_with_aip_tracing_or_an_otlp_endpoint(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], on: bool
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert GatewaySettings(_env_file=None).tracing_on is on


def test_the_service_is_named_aiplatform_gateway_unless_otel_service_name_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = GatewaySettings(_env_file=None, tracing=True, traces_exporter="console")
    provider = tracing.tracer_provider(settings)
    assert provider.resource.attributes["service.name"] == "aiplatform-gateway"
    provider.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu-1")
    provider = tracing.tracer_provider(settings)
    assert provider.resource.attributes["service.name"] == "gateway-eu-1"
    provider.shutdown()


async def test_tracing_on_without_the_otel_extra_stops_startup_with_one_line(tmp_path: Path) -> None:
    # The gateway as it runs when the OpenTelemetry packages are absent: importing them fails.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['opentelemetry'] = None\n")
    env = gateway_env(AIP_TRACING="true", PYTHONPATH=str(tmp_path))
    code, stderr = await failed_start(env, tmp_path)
    assert code == 1
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith("aiplatform: tracing is on")
    assert "pip install 'aiplatform-gateway[otel]'" in stderr[0]


# --- the whole way: python -m server exporting to an OTLP collector ------------------------------


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A fake OTLP/gRPC collector: keeps every span it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> Iterator[tuple[dict[str, Any], Any]]:
        """Every span with its resource's attributes."""
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {item.key: item.value.string_value for item in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        yield resource, span


async def test_an_otlp_endpoint_turns_tracing_on_and_gets_the_spans(tmp_path: Path) -> None:
    collector = _Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with open_upstream("openai") as upstream:
            env = gateway_env(
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                OTEL_BSP_SCHEDULE_DELAY="50",
                OPENAI_API_KEY=upstream.fake.api_key,  # type: ignore[union-attr]
                OPENAI_BASE_URL=upstream.fake.base_url,
                OPENAI_DEFAULT_MODEL=fake_openai.MODEL_NORMAL,
            )
            async with running_gateway(env, tmp_path) as process:
                stub = process.stub
                metadata = (("traceparent", CALLER_TRACEPARENT),)
                _, error = await collect(stub.StreamChat(_stream_request(upstream), metadata=metadata))
                assert error is None
                await until(lambda: any(span.kind == span.SPAN_KIND_SERVER for _, span in collector.spans()), 10)
            (chat_request,) = upstream.chat_requests()
    finally:
        await server.stop(None)

    spans = list(collector.spans())
    (server_span,) = [span for _, span in spans if span.kind == span.SPAN_KIND_SERVER]
    resource = next(resource for resource, span in spans if span is server_span)
    assert resource["service.name"] == "aiplatform-gateway"
    assert server_span.name == STREAM_CHAT
    assert server_span.trace_id.hex() == f"{CALLER_TRACE_ID:032x}"
    assert server_span.parent_span_id.hex() == f"{CALLER_SPAN_ID:016x}"
    attributes = {item.key: item.value for item in server_span.attributes}
    assert attributes["aiplatform.service"].string_value == "openai"
    assert attributes["aiplatform.output_tokens"].int_value > 0
    (client_span,) = [span for _, span in spans if span.kind == span.SPAN_KIND_CLIENT]
    assert client_span.parent_span_id == server_span.span_id
    assert _sent_traceparent(chat_request) == f"00-{CALLER_TRACE_ID:032x}-{client_span.span_id.hex()}"


async def test_an_upstream_answer_after_the_call_ended_leaves_the_ended_span_alone(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    # A caller who leaves a Coze stream ends the call, and its span, at once; the gateway's cancel at
    # Coze runs on in the background, and its answer's log id is no fact of the ended call.
    async with open_upstream("coze") as upstream, traced_gateway(upstream.service(), exporter) as channel:
        fake = upstream.fake
        assert isinstance(fake, fake_coze.FakeCoze)
        stub = pb_grpc.AIPlatformServiceStub(channel)
        call = stub.StreamChat(_stream_request(upstream, Fault.STALL))
        assert (await call.read()).delta
        call.cancel()
        await until(lambda: len(fake.cancelled_chats) == 1)
        spans = await _cancel_spans(exporter)
    (server,) = _of_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert server.end_time is not None and spans[0].end_time is not None and server.end_time < spans[0].end_time
    (chat,) = upstream.chat_requests()
    (cancel,) = [request for request in fake.requests if request.path == "/v3/chat/cancel"]
    # The call's span keeps the chat's log id; the cancel's is on the cancel's own span only.
    assert dict(server.attributes or {})["aiplatform.upstream_log_id"] == _log_id(chat)
    assert dict(spans[0].attributes or {})["aiplatform.upstream_log_id"] == _log_id(cancel) != _log_id(chat)
    assert not [record for record in caplog.records if "ended span" in record.getMessage()]


async def _cancel_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The client spans of /v3/chat/cancel requests, once one has ended."""
    async with asyncio.timeout(5):
        while True:
            spans = [
                span
                for span in _of_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
                if str(dict(span.attributes or {}).get("url.full", "")).endswith("/v3/chat/cancel")
                or str(dict(span.attributes or {}).get("http.url", "")).endswith("/v3/chat/cancel")
            ]
            if spans:
                return spans
            await asyncio.sleep(0.02)
