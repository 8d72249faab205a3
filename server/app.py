"""Builds and runs the gRPC server: the servicer, health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.registry import ServiceRegistry
from server.convert import RequestLimits
from server.errors import Scrubber
from server.interceptors import ErrorStatusInterceptor
from server.servicer import AIPlatformServicer
from server.services import build_registry
from server.settings import Settings

_LOGGER = logging.getLogger(__name__)
# After the gateway ended the calls left at the end of the grace, how long grpc may take to send
# their statuses before it cancels whatever remains.
_STATUS_SECONDS = 1.0

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AIPlatformService"].full_name


class AddressInUse(RuntimeError):
    """The listen address cannot be bound."""


@dataclass
class GatewayServer:
    """A started gateway: the grpc.aio server and what shutdown needs."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    registry: ServiceRegistry
    errors: ErrorStatusInterceptor

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
        await self.registry.aclose()

    def _end_calls(self) -> None:
        if ended := self.errors.end_calls():
            _LOGGER.info("shutdown grace over: ended %d calls still in flight", ended)


async def start_server(
    settings: Settings, registry: ServiceRegistry | None = None, *, share_port: bool = False
) -> GatewayServer:
    """Start a gateway on ``settings.gateway.address``; tests pass port 0 and their own registry.

    ``share_port`` lets several worker processes listen on one port (SO_REUSEPORT).
    """
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
    ]
    # Every credential the services hold is scrubbed from what callers and the log are told.
    errors = ErrorStatusInterceptor(Scrubber(registry.secrets()))
    server = grpc.aio.server(interceptors=[errors], options=options)
    limits = RequestLimits(
        max_messages=gateway.max_messages,
        max_message_bytes=gateway.max_message_bytes,
        max_parameters_bytes=gateway.max_parameters_bytes,
    )
    pb_grpc.add_AIPlatformServiceServicer_to_server(AIPlatformServicer(registry, limits), server)

    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )

    address = gateway.address
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as error:
        await registry.aclose()
        raise AddressInUse(f"cannot listen on {address}: the address is in use or not available") from error
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    _LOGGER.info(
        "AI Platform gateway listening on %s (services: %s)",
        _bound(address, port),
        ", ".join(service.name for service in registry.list()),
    )
    return GatewayServer(server=server, port=port, health=health_servicer, registry=registry, errors=errors)


async def serve(settings: Settings, *, share_port: bool = False) -> None:
    """Run the gateway until SIGTERM or SIGINT, then shut down gracefully."""
    gateway = await start_server(settings, share_port=share_port)
    tune_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    _LOGGER.info("shutting down: in-flight calls get %.1f s", settings.gateway.grace_seconds)
    await gateway.stop(settings.gateway.grace_seconds)
    _LOGGER.info("stopped")


#: Allocations between young collections (CPython's default is 700), and how many collections of
#: one generation trigger one of the next (default 10 and 10).
GC_THRESHOLDS = (10_000, 20, 20)


def tune_garbage_collector() -> None:
    """Keep Python's cycle collector from pausing a busy gateway; call once, after start-up.

    With thousands of streams open, CPython's default thresholds run a full collection
    every few seconds, each walking every live object: 19 of them paused the event loop
    for up to 0.44 s apiece in the 5,000-stream benchmark, 4.2 s in all (benchmarks/RESULTS.md).
    Freezing what start-up created (modules, schemas, clients: never garbage) takes it out
    of every later collection, and higher thresholds make collections rarer; cycles are
    still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _LOGGER.info(
        "garbage collector: %d start-up objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold()
    )


def _bound(address: str, port: int) -> str:
    host = address.rpartition(":")[0]
    return f"{host}:{port}"
