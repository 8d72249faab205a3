"""Prometheus metrics: grpc's conventional server metrics and the gateway's AI metrics, on ``/metrics``.

The gRPC metrics are named as go-grpc-prometheus names them, so existing dashboards work; the AI
metrics are labelled by ``service`` and ``provider`` only. Every label value is bounded: a method
of the served protos, a configured service's name, a status code, an ``ErrorInfo`` reason. A
caller's unknown service name, user id, conversation id or text never becomes a label.

With ``AIP_WORKERS`` > 1 the workers write their values into files that the supervising parent
sums on each scrape (prometheus-client's multiprocess mode): one scrape shows the whole gateway.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    multiprocess,
    start_http_server,
    values,
)

from server.interceptors import CallRecord

_LOGGER = logging.getLogger(__name__)

# Seconds. gRPC handling and upstream calls: from a refused call (well under a millisecond) to a
# long workflow; time to first token: what a chat user notices.
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)


class GatewayMetrics:
    """The gateway's metrics, kept up to date as a CallInterceptor observer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        #: Where the metrics live: a registry of their own (several gateways in one test process
        #: must not share one), or, in a worker, values written to the multiprocess directory.
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        ai_labels = ("service", "provider")
        self._started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", grpc_labels, registry=self.registry
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*grpc_labels, "grpc_code"),
            registry=self.registry,
        )
        self._sent = Counter(
            "grpc_server_msg_sent_total",
            "gRPC stream messages sent by the server.",
            grpc_labels,
            registry=self.registry,
        )
        self._handling = Histogram(
            "grpc_server_handling_seconds",
            "Response latency (seconds) of gRPC calls handled by the server.",
            grpc_labels,
            buckets=_CALL_BUCKETS,
            registry=self.registry,
        )
        self._ttft = Histogram(
            "aiplatform_time_to_first_token_seconds",
            "From a streaming call's start to its first message (a token, a workflow event).",
            ai_labels,
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self._upstream = Histogram(
            "aiplatform_upstream_request_seconds",
            "From the request's arrival to the call's end, for calls that reached their upstream.",
            ai_labels,
            buckets=_CALL_BUCKETS,
            registry=self.registry,
        )
        self._tokens = Counter(
            "aiplatform_tokens_total",
            "Tokens used, by caller key (empty without keys), direction (input or output) and source "
            "(reported by the upstream, or estimated by the gateway when it reported none).",
            (*ai_labels, "caller", "direction", "source"),
            registry=self.registry,
        )
        self._caller_refusals = Counter(
            "aiplatform_caller_refusals_total",
            "Calls refused for their caller key: UNAUTHENTICATED, PERMISSION_DENIED, or a limit of the key "
            "(reason RATE_LIMITED, CALLER_OVERLOADED, TOKEN_QUOTA_EXCEEDED, LIMITS_UNAVAILABLE).",
            ("caller", "reason"),
            registry=self.registry,
        )
        self._streams = Gauge(
            "aiplatform_streams_in_flight",
            "Streaming calls to a service in flight.",
            ai_labels,
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._upstream_errors = Counter(
            "aiplatform_upstream_errors_total",
            "Calls that failed at their upstream, by ErrorInfo reason.",
            (*ai_labels, "reason"),
            registry=self.registry,
        )

    def call_started(self, call: CallRecord) -> None:
        if _is_stream_to_a_service(call):
            self._streams.labels(call.service, call.provider).inc()

    def call_ended(self, call: CallRecord) -> None:
        """Count one ended call."""
        if _is_stream_to_a_service(call):
            self._streams.labels(call.service, call.provider).dec()
        grpc_service, _, grpc_method = call.method.lstrip("/").rpartition("/")
        labels = (call.kind, grpc_service, grpc_method)
        self._started.labels(*labels).inc()
        self._handled.labels(*labels, call.code.name).inc()
        if call.messages_sent and call.kind != "unary":
            self._sent.labels(*labels).inc(call.messages_sent)
        self._handling.labels(*labels).observe(call.duration)
        if call.reason in CALLER_REFUSALS:
            self._caller_refusals.labels(call.caller, call.reason).inc()
        if not call.service:
            return
        ai = (call.service, call.provider)
        if call.first_response is not None:
            self._ttft.labels(*ai).observe(call.first_response - call.started)
        if call.reached_upstream and call.handling_started is not None:
            self._upstream.labels(*ai).observe(call.ended - call.handling_started)
        source = call.usage_source.name.lower()
        if call.input_tokens:
            self._tokens.labels(*ai, call.caller, "input", source).inc(call.input_tokens)
        if call.output_tokens:
            self._tokens.labels(*ai, call.caller, "output", source).inc(call.output_tokens)
        if call.upstream_failed:
            self._upstream_errors.labels(*ai, call.reason).inc()


#: The ErrorInfo reasons of the calls refused for their caller key.
CALLER_REFUSALS = frozenset(
    {
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "RATE_LIMITED",
        "CALLER_OVERLOADED",
        "TOKEN_QUOTA_EXCEEDED",
        "LIMITS_UNAVAILABLE",
    }
)


def _is_stream_to_a_service(call: CallRecord) -> bool:
    return call.kind == "server_stream" and bool(call.service)


class MetricsAddressInUse(RuntimeError):
    """AIP_METRICS_ADDRESS cannot be bound."""


def serve_metrics(address: str, registry: CollectorRegistry) -> int:
    """Serve ``registry`` on ``http://address/metrics`` from a thread; returns the bound port."""
    host, _, port = address.rpartition(":")
    try:
        server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    except OSError as error:
        raise MetricsAddressInUse(
            f"cannot serve metrics on {address} (AIP_METRICS_ADDRESS): {error.strerror or error}"
        ) from error
    bound = int(server.server_address[1])
    _LOGGER.info("metrics on http://%s:%d/metrics", host, bound)
    return bound


def single_process_registry() -> CollectorRegistry:
    """A registry for a gateway of one process: its metrics and the process's own (CPU, memory, fds)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry


@contextmanager
def multiprocess_directory() -> Iterator[str]:
    """A fresh directory for the workers' metric files, removed afterwards."""
    directory = tempfile.mkdtemp(prefix="aiplatform-metrics-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_values_to(directory: str) -> None:
    """In a worker, before any metric exists: keep values in ``directory``'s files, for the parent to sum.

    prometheus-client picks how values are kept when it is imported, from the environment; the
    workers are forked after that import, so the choice is made here again, the same way.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def multiprocess_registry(directory: str) -> CollectorRegistry:
    """The registry the supervising parent serves: the sum of every worker's files."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def worker_exited(pid: int, directory: str) -> None:
    """Drop a stopped worker's live gauges (its streams in flight are no more)."""
    multiprocess.mark_process_dead(pid, path=directory)  # type: ignore[no-untyped-call]
