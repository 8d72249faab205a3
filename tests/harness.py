"""The one test harness: a real gateway on a free port and a stub for it, as grpclib's `testing.ChannelFor`.

`gateway_for` starts an in-process gateway (`server.app.start_server`) on 127.0.0.1 port 0, opens a
channel to it and yields a `GatewayUnderTest` (``.server``, ``.target``, ``.channel``, ``.stub``,
``.health``, ``.registry``); at the end it closes the channel, then stops the server. The fixtures in
conftest (`gateway`, `target`, `channel`, `stub`) and `tests.fakes.upstreams.serving` are built on it;
`tests.gateway_process.running_gateway` is its `python -m server` twin, with the same ``.target``,
``.channel`` and ``.stub``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.base import AIService
from providers.guard import Backoff
from providers.limits import ServiceLimits
from providers.registry import ServiceRegistry
from server.app import GatewayServer, start_server
from server.callers import KeyEntry
from server.settings import CozeSettings, GatewaySettings, Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from tests.fakes.coze import FakeCoze

#: A service with the limits its calls are guarded by, and optionally the guard's retry backoff.
GuardedService = tuple[AIService, ServiceLimits] | tuple[AIService, ServiceLimits, Backoff]
#: A service to serve: alone (the default ServiceLimits) or guarded by limits of its own.
ServiceSpec = AIService | GuardedService


def make_settings(
    fake_coze: FakeCoze | None, *, caller_keys: Mapping[str, KeyEntry] | None = None, **gateway: Any
) -> Settings:
    """Settings for a test gateway on a free port, pointed at ``fake_coze`` when given, with ``caller_keys``."""
    coze = (
        CozeSettings(_env_file=None, api_token=fake_coze.token, api_base=fake_coze.base_url)
        if fake_coze is not None
        else CozeSettings(_env_file=None)
    )
    return Settings(
        gateway=GatewaySettings(_env_file=None, address="127.0.0.1:0", **gateway),
        coze=coze,
        caller_keys=dict(caller_keys or {}),
    )


class GatewayUnderTest:
    """A started gateway and an open channel to it."""

    def __init__(self, server: GatewayServer, channel: grpc.aio.Channel) -> None:
        self.server = server
        self.port = server.port
        self.target = f"127.0.0.1:{server.port}"
        self.channel = channel
        self.stub = pb_grpc.AIPlatformServiceStub(channel)
        self.health = health_pb2_grpc.HealthStub(channel)
        #: The services it serves: the registry the test gave (or `gateway_for` built from ``services``),
        #: else the one the gateway built from the settings.
        self.registry: ServiceRegistry = server.registry
        self.stopped = False

    async def stop(self, grace: float | None) -> None:
        """Stop the server now (a shutdown test); `gateway_for` then only closes the channel."""
        self.stopped = True
        await self.server.stop(grace)


@contextlib.asynccontextmanager
async def gateway_for(
    settings: Settings | None = None,
    *,
    registry: ServiceRegistry | None = None,
    services: Iterable[ServiceSpec] = (),
    fake_coze: FakeCoze | None = None,
    grace: float | None = 0,
    channel_options: Sequence[tuple[str, Any]] = (),
    channel_credentials: grpc.ChannelCredentials | None = None,
    tracer_provider: TracerProvider | None = None,
    **gateway_settings: Any,
) -> AsyncIterator[GatewayUnderTest]:
    """A real gateway on 127.0.0.1 port 0 and a channel to it, for the block.

    ``settings`` default to `make_settings(fake_coze, **gateway_settings)`. ``services`` (each alone or
    with its ServiceLimits, and Backoff) are registered in ``registry`` (a new one when not given); with
    neither, the gateway builds its registry from the settings, as `python -m server` does. At the end the channel
    is closed, then the server stopped with ``grace`` (unless the test stopped it with `GatewayUnderTest.stop`).
    ``channel_credentials`` make the channel a TLS one (for a gateway serving TLS).
    """
    if settings is None:
        settings = make_settings(fake_coze, **gateway_settings)
    elif fake_coze is not None or gateway_settings:
        raise TypeError("give settings, or fake_coze and gateway settings, not both")
    specs = list(services)
    if specs:
        registry = registry if registry is not None else ServiceRegistry()
        for spec in specs:
            if isinstance(spec, tuple):
                registry.register(*spec)
            else:
                registry.register(spec)
    server = await start_server(settings, registry, tracer_provider=tracer_provider)
    started: GatewayUnderTest | None = None
    try:
        target, options = f"127.0.0.1:{server.port}", list(channel_options)
        channel = (
            grpc.aio.insecure_channel(target, options=options)
            if channel_credentials is None
            else grpc.aio.secure_channel(target, channel_credentials, options=options)
        )
        async with channel:
            started = GatewayUnderTest(server, channel)
            yield started
    finally:
        if started is None or not started.stopped:
            await server.stop(grace)
