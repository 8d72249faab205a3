"""Builds and runs the gRPC server: the servicer, health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.registry import ServiceRegistry
from server.access_log import AccessLog
from server.admission import CallerAdmission, ServiceAllowance
from server.callers import CallerKeys
from server.errors import Scrubber
from server.interceptors import CallInterceptor, CallLimits, CallObserver
from server.limits import CallerLimits, LimitStore, MemoryLimitStore, RedisLimitStore
from server.memory import release_memory_after_bursts
from server.metrics import GatewayMetrics, serve_metrics, single_process_registry, write_values_to
from server.process import descriptors_needed, make_room_for_descriptors, tune_garbage_collector
from server.servicer import AIPlatformServicer
from server.services import build_registry
from server.settings import ConfigError, GatewaySettings, Settings

if TYPE_CHECKING:  # server.tracing needs the otel extra: imported only when tracing is on
    from opentelemetry.sdk.trace import TracerProvider

    from server.tracing import Tracing

_LOGGER = logging.getLogger(__name__)
# After the gateway ended the calls left at the end of the grace, how long grpc may take to send
# their statuses before it cancels whatever remains.
_STATUS_SECONDS = 1.0

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AIPlatformService"].full_name


class AddressInUse(RuntimeError):
    """The listen address cannot be bound."""


class TracingUnavailable(RuntimeError):
    """Tracing is on, but the OpenTelemetry packages (the ``otel`` extra) are not installed."""


@dataclass
class GatewayServer:
    """A started gateway: the grpc.aio server and what shutdown needs."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    registry: ServiceRegistry
    calls: CallInterceptor
    memory_releaser: asyncio.Task[None]
    tracing: Tracing | None = None
    admission: CallerAdmission | None = None

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, give in-flight ones ``grace`` seconds, then end them and close upstreams."""
        # Health first, so load balancers stop sending before the port closes.
        await self.health.enter_graceful_shutdown()
        # grpc refuses new calls at once and cancels what is left when its grace ends, logging two
        # tracebacks per call; the gateway ends its calls itself at the grace (UNAVAILABLE,
        # SHUTTING_DOWN, one INFO line each) and gives grpc a moment more for the last statuses.
        if grace is None:
            await self.server.stop(None)
        else:
            timer = asyncio.get_running_loop().call_later(grace, self._end_calls)
            try:
                await self.server.stop(grace + _STATUS_SECONDS)
            finally:
                timer.cancel()
        self.memory_releaser.cancel()
        if self.admission is not None:
            await self.admission.aclose()
        await self.registry.aclose()
        if self.tracing is not None:
            await self.tracing.aclose()

    def _end_calls(self) -> None:
        if ended := self.calls.end_calls():
            _LOGGER.info("shutdown grace over: ended %d calls still in flight", ended)


async def start_server(
    settings: Settings,
    registry: ServiceRegistry | None = None,
    *,
    share_port: bool = False,
    observers: Sequence[CallObserver] = (),
    tracer_provider: TracerProvider | None = None,
) -> GatewayServer:
    """Start a gateway on ``settings.gateway.address``; tests pass port 0 and their own registry.

    ``share_port`` lets several worker processes listen on one port (SO_REUSEPORT). Every call
    is written to the access log and told to ``observers`` (metrics) when it ends. With tracing on
    (``GatewaySettings.tracing_on``), spans go to ``tracer_provider`` when given (tests), else to
    the exporter the settings name.
    """
    gateway = settings.gateway
    # Before the registry: the upstream sessions made from now on are traced.
    tracing = _tracing_starter()(gateway, tracer_provider) if gateway.tracing_on else None
    try:
        return await _start_server(settings, registry, share_port, observers, tracing)
    except BaseException:
        if tracing is not None:
            await tracing.aclose()
        raise


async def _start_server(
    settings: Settings,
    registry: ServiceRegistry | None,
    share_port: bool,
    observers: Sequence[CallObserver],
    tracing: Tracing | None,
) -> GatewayServer:
    registry = registry if registry is not None else build_registry(settings)
    gateway = settings.gateway
    options = [
        # grpc turns SO_REUSEPORT on by default, so a second gateway on a busy port
        # would start silently and share the traffic; only workers share on purpose.
        ("grpc.so_reuseport", 1 if share_port else 0),
        ("grpc.max_receive_message_length", gateway.max_receive_message_bytes),
        # No bandwidth probing on inbound data: what callers send is small requests, and a probe
        # (a PING and its answer) per burst of them costs wake-ups on both ends. With 5,000
        # streams arriving it lowered TTFT p99 by a fifth in two runs (benchmarks/RESULTS.md).
        ("grpc.http2.bdp_probe", 0),
        # Clients only look for new replicas when a connection ends: end them now and then
        # (GOAWAY), but give calls on the old connection as long as a call may take.
        ("grpc.max_connection_age_ms", int(gateway.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int((gateway.total_timeout_seconds + 30) * 1000)),
        *_connection_limits(gateway),
    ]
    admission = caller_admission(settings, registry)
    # Every credential the services hold is scrubbed from what callers and the log are told.
    calls = CallInterceptor(
        Scrubber(registry.secrets()),
        CallLimits(
            max_calls=gateway.max_calls_in_flight,
            request_arrival_seconds=gateway.request_arrival_timeout_seconds,
        ),
        provider_of=registry.provider_of,
        observers=(AccessLog(), *observers, *([tracing.observer] if tracing else [])),
        admission=admission,
    )
    # The tracing interceptor first: its span then encloses all that CallInterceptor does, observers included.
    interceptors: list[grpc.aio.ServerInterceptor] = [tracing.interceptor, calls] if tracing else [calls]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    limits = gateway.request_limits()
    pb_grpc.add_AIPlatformServiceServicer_to_server(AIPlatformServicer(registry, limits), server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if gateway.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )

    address = gateway.address
    try:
        credentials = gateway.server_credentials()
    except ConfigError:
        await _close(registry, admission)
        raise
    try:
        port = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
    except RuntimeError as error:
        await _close(registry, admission)
        raise AddressInUse(f"cannot listen on {address}: the address is in use or not available") from error
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    _LOGGER.info(
        "AI Platform gateway listening on %s with %s (services: %s)",
        _bound(address, port),
        gateway.transport_security,
        ", ".join(service.name for service in registry.list()),
    )
    releaser = asyncio.create_task(release_memory_after_bursts(calls.take_peak), name="memory-releaser")
    return GatewayServer(
        server=server,
        port=port,
        health=health_servicer,
        registry=registry,
        calls=calls,
        memory_releaser=releaser,
        tracing=tracing,
        admission=admission,
    )


async def _close(registry: ServiceRegistry, admission: CallerAdmission | None) -> None:
    if admission is not None:
        await admission.aclose()
    await registry.aclose()


def caller_admission(settings: Settings, registry: ServiceRegistry) -> CallerAdmission | None:
    """Caller keys and their limits, when the AIP_CONFIG file configures keys (None: the gateway runs open)."""
    if not settings.caller_keys:
        return None
    gateway = settings.gateway
    store: LimitStore = (
        RedisLimitStore(gateway.redis_url.get_secret_value()) if gateway.redis_url else MemoryLimitStore()
    )

    def allowance_of(service: str) -> ServiceAllowance:
        limits = registry.limits_of(service)
        # A concurrency lease outlives the longest call, and the arrival of its request.
        lease = limits.total_timeout_seconds + gateway.request_arrival_timeout_seconds + gateway.grace_seconds
        return ServiceAllowance(limits.reserved_output_tokens, lease)

    return CallerAdmission(
        CallerKeys.from_entries(settings.caller_keys),
        CallerLimits(store, fail_open=gateway.redis_fail_open),
        allowance_of,
    )


def warn_when_open(settings: Settings) -> None:
    """Say at start, once, what a gateway without keys, or with per-process limits, lets through."""
    gateway = settings.gateway
    if not settings.caller_keys:
        _LOGGER.warning(
            "no caller keys are configured: anyone who reaches %s can call every service, without limits "
            "(README: Security and limits)",
            gateway.address,
        )
    elif (
        gateway.workers > 1 and not gateway.redis_url and any(entry.limited for entry in settings.caller_keys.values())
    ):
        _LOGGER.warning(
            "the keys' limits are kept per worker process: with AIP_WORKERS=%d a key may use up to %d times "
            "its limits; set AIP_REDIS_URL to share one budget",
            gateway.workers,
            gateway.workers,
        )


def check_tracing(gateway: GatewaySettings) -> None:
    """With tracing on, raise TracingUnavailable now if the otel extra is missing (in a parent, before workers fork)."""
    if gateway.tracing_on:
        _tracing_starter()


def _tracing_starter() -> Callable[[GatewaySettings, TracerProvider | None], Tracing]:
    """server/tracing.py's start_tracing, or TracingUnavailable when the otel extra is not installed."""
    try:
        from server.tracing import start_tracing
    except ImportError as error:
        raise TracingUnavailable(
            "tracing is on (AIP_TRACING, or OTEL_EXPORTER_OTLP_ENDPOINT is set) but OpenTelemetry is not installed "
            f"({error}): pip install 'aiplatform-gateway[otel]', or set AIP_TRACING=false"
        ) from error
    return start_tracing


#: The shortest interval at which a client may ping a connection that carries no calls, and the
#: pings below it tolerated before the connection is closed (GOAWAY ENHANCE_YOUR_CALM): clients'
#: keepalives of 10 s and more are welcome, a ping flood is not.
MIN_CLIENT_PING_INTERVAL_MS = 10_000
MAX_PING_STRIKES = 2
#: The gateway's own keepalive: a connection whose peer stopped answering pings is closed, and
#: its calls with it, instead of waiting for TCP to give up (a quarter of an hour).
KEEPALIVE_MS, KEEPALIVE_TIMEOUT_MS = 60_000, 20_000
# How many arrived calls grpc may queue until the event loop takes them, per admitted call. Its
# default (1,000, then dropping calls at random up to 3,000) cancels a burst's excess: CANCELLED,
# which callers do not retry well. Queued past the admission limit, a call is refused with
# RESOURCE_EXHAUSTED at once instead (server/interceptors.py).
_PENDING_CALLS_PER_ADMITTED_CALL = 8


def _connection_limits(gateway: GatewaySettings) -> list[tuple[str, int]]:
    """grpc's options that keep connections and half-open streams from piling up."""
    pending = gateway.max_calls_in_flight * _PENDING_CALLS_PER_ADMITTED_CALL
    return [
        ("grpc.max_concurrent_streams", gateway.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", int(gateway.max_connection_idle_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Unlimited: the gateway's own pings on a connection whose streams are silent (a long
        # first token) must go on, or a dead peer would go unnoticed there.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending),
    ]


async def serve(settings: Settings, *, share_port: bool = False, metrics_directory: str | None = None) -> None:
    """Run the gateway until SIGTERM or SIGINT, then shut down gracefully.

    A worker (``share_port``) passes ``metrics_directory``: its metrics go there, for the
    supervising parent to serve summed; a single process serves its own on AIP_METRICS_ADDRESS.
    """
    observers: list[CallObserver] = []
    if settings.gateway.metrics_address:
        if metrics_directory is not None:
            write_values_to(metrics_directory)
            observers.append(GatewayMetrics())
        else:
            registry = single_process_registry()
            observers.append(GatewayMetrics(registry))
            serve_metrics(settings.gateway.metrics_address, registry)
    gateway = await start_server(settings, share_port=share_port, observers=observers)
    if not share_port:  # workers: the supervising parent says it once
        warn_when_open(settings)
    # Once the start has succeeded (a failed start says one line, nothing else), before the load:
    # growing the descriptor table then stalls the event loop once, not at every doubling under load.
    make_room_for_descriptors(descriptors_needed(settings.gateway.max_calls_in_flight))
    tune_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    _LOGGER.info("shutting down: in-flight calls get %.1f s", settings.gateway.grace_seconds)
    await gateway.stop(settings.gateway.grace_seconds)
    _LOGGER.info("stopped")


def _bound(address: str, port: int) -> str:
    host = address.rpartition(":")[0]
    return f"{host}:{port}"
