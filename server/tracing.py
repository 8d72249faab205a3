"""OpenTelemetry traces: a server span per RPC, a client span per upstream HTTP attempt, W3C trace context both ways.

Imported only when tracing is on (``AIP_TRACING``, or an OTLP endpoint: ``GatewaySettings.tracing_on``), since it
needs the ``otel`` extra (``pip install 'aiplatform-gateway[otel]'``). The PyPI instrumentations do the work:

- opentelemetry-instrumentation-grpc's aio server interceptor starts a SERVER span for each call of the gateway's
  own service (health checks and reflection are not traced) and continues the caller's trace when its metadata
  carries a ``traceparent``. It is placed before ``CallInterceptor``, so that its span encloses the whole call:
  admission, the request's arrival, the handler, the status set from any exception, and the observers.
- opentelemetry-instrumentation-aiohttp-client gives every request of every aiohttp session a CLIENT span (so each
  retry of an upstream request is a span of its own) and sends ``traceparent`` with it. Both providers' requests
  go out through aiohttp: the OpenAI-compatible one directly, cozepy's through httpx on aiohttp's engine. It
  instruments ``aiohttp.ClientSession`` process-wide, from ``start_tracing`` until ``Tracing.aclose``.
- ``CallSpans``, a ``CallInterceptor`` observer that runs inside the server span, names the span after the method
  and adds the call's facts: service, provider, tokens, request id, upstream log id, status.

Only W3C trace context is propagated, not baggage: the upstreams are third parties, and a caller's baggage is not
theirs to read. No span holds message text, parameter values or credentials: the instrumentations record
methods, URLs (the upstreams' URLs hold no secret), peers and statuses; no request header is recorded unless an
operator asks for it with ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST``.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field

import aiohttp
import grpc
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.grpc.filters import service_name
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from providers.coze import LOG_ID_HEADER as COZE_LOG_ID_HEADER
from providers.openai import LOG_ID_HEADER as OPENAI_LOG_ID_HEADER
from server.interceptors import CallRecord
from server.settings import GatewaySettings

#: The resource's ``service.name`` unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names another.
DEFAULT_SERVICE_NAME = "aiplatform-gateway"
#: The gRPC service whose calls are traced.
TRACED_SERVICE = "aiplatform.v1.AIPlatformService"

# The gateway's span attributes.
SERVICE = "aiplatform.service"
PROVIDER = "aiplatform.provider"
INPUT_TOKENS = "aiplatform.input_tokens"
OUTPUT_TOKENS = "aiplatform.output_tokens"
USAGE_SOURCE = "aiplatform.usage_source"
CALLER = "aiplatform.caller"
REQUEST_ID = "aiplatform.request_id"
UPSTREAM_LOG_ID = "aiplatform.upstream_log_id"
REASON = "aiplatform.reason"
# The semantic conventions' name (the grpc instrumentation's too), set again from the call's final code: a call
# its caller cancelled, or whose deadline passed, ends without the handler setting a code.
GRPC_STATUS_CODE = "rpc.grpc.status_code"

# The response headers that carry an upstream's log id (Coze's, and OpenAI's request id).
_LOG_ID_HEADERS = (COZE_LOG_ID_HEADER, OPENAI_LOG_ID_HEADER)
_MAX_LOG_ID_CHARS = 128
# The codes a server span reports as an error, by the semantic conventions for gRPC: the others are the
# caller's doing (a bad request, a missing service, a cancelled call).
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

# The server span of the call in progress, for the upstream responses' log ids. Set in the handler's task
# when the request has arrived; the provider's requests run in that task, or in tasks it starts, which
# inherit it.
_SERVER_SPAN: ContextVar[Span | None] = ContextVar("aiplatform_server_span", default=None)


class CallSpans:
    """Names each call's server span and adds the call's facts to it (a CallInterceptor observer).

    The observer is told of a call inside the handler, where the server span is the current span.
    """

    def call_started(self, call: CallRecord) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            _SERVER_SPAN.set(span)

    def call_ended(self, call: CallRecord) -> None:
        span = trace.get_current_span()
        if not span.is_recording():
            return  # a call that is not traced (health, reflection)
        # The instrumentation names the span after the path, ``/package.Service/Method``; the semantic
        # conventions' name has no leading slash.
        span.update_name(call.method.lstrip("/"))
        attributes: dict[str, str | int] = {REQUEST_ID: call.request_id, GRPC_STATUS_CODE: call.code.value[0]}
        if call.caller:
            attributes[CALLER] = call.caller
        if call.service:
            attributes |= {
                SERVICE: call.service,
                PROVIDER: call.provider,
                INPUT_TOKENS: call.input_tokens,
                OUTPUT_TOKENS: call.output_tokens,
                USAGE_SOURCE: call.usage_source.name.lower(),
            }
        if call.upstream_log_id:  # the log id of the upstream's failure (else the responses' set it)
            attributes[UPSTREAM_LOG_ID] = call.upstream_log_id
        if call.reason:
            attributes[REASON] = call.reason
        span.set_attributes(attributes)
        if call.code in _SERVER_ERRORS:
            # The ErrorInfo reason, not the status message (the instrumentation's description), which may
            # quote what an upstream said about the request.
            span.set_status(Status(StatusCode.ERROR, call.reason or call.code.name))


def _note_log_id(span: Span, params: aiohttp.TraceRequestEndParams | aiohttp.TraceRequestExceptionParams) -> None:
    """The aiohttp instrumentation's response hook: the upstream's log id, on the attempt's span and the call's."""
    response = getattr(params, "response", None)
    if response is None:
        return
    for header in _LOG_ID_HEADERS:
        if log_id := response.headers.get(header):
            log_id = log_id[:_MAX_LOG_ID_CHARS]
            span.set_attribute(UPSTREAM_LOG_ID, log_id)
            server_span = _SERVER_SPAN.get()
            # Not once the call has ended: the background cancel of a chat its caller left is
            # answered later, and the SDK would warn of an attribute set on an ended span.
            if server_span is not None and server_span.is_recording():
                server_span.set_attribute(UPSTREAM_LOG_ID, log_id)
            return


@dataclass
class Tracing:
    """Tracing while it is on: the server interceptor and observer to install, and what ``aclose`` undoes."""

    provider: TracerProvider
    #: Goes before CallInterceptor in the server's interceptors.
    interceptor: grpc.aio.ServerInterceptor
    observer: CallSpans = field(default_factory=CallSpans)
    _previous_propagator: TextMapPropagator | None = None
    _owns_provider: bool = False

    async def aclose(self) -> None:
        """Stop instrumenting aiohttp sessions, restore the propagator; a provider of its own sends its last spans."""
        AioHttpClientInstrumentor().uninstrument()
        if self._previous_propagator is not None:
            propagate.set_global_textmap(self._previous_propagator)
        if self._owns_provider:
            # Exports what the batch still holds (blocking, up to the exporter's timeout): off the event loop.
            await asyncio.to_thread(self.provider.shutdown)


def start_tracing(settings: GatewaySettings, provider: TracerProvider | None = None) -> Tracing:
    """Start tracing: spans go to ``provider`` (tests pass one), else to the exporter the settings name.

    Instruments aiohttp's sessions process-wide until ``Tracing.aclose``: start it before the upstream
    sessions are made (they are made on first use).
    """
    owns_provider = provider is None
    if provider is None:
        provider = tracer_provider(settings)
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    AioHttpClientInstrumentor().instrument(tracer_provider=provider, response_hook=_note_log_id)
    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=service_name(TRACED_SERVICE)
    )
    return Tracing(provider, interceptor, _previous_propagator=previous, _owns_provider=owns_provider)


def tracer_provider(settings: GatewaySettings) -> TracerProvider:
    """A provider that batches spans to the OTLP/gRPC endpoint (or stdout, ``OTEL_TRACES_EXPORTER=console``).

    The sampler, the exporter's headers, certificates and timeouts follow the SDK's own OTEL_* variables.
    """
    exporter: SpanExporter = (
        ConsoleSpanExporter()
        if settings.traces_exporter == "console"
        else OTLPSpanExporter(endpoint=settings.otlp_endpoint or None)
    )
    # The default name first, then what OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say over it.
    resource = Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAME}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
