"""Shared fixtures: a fake Coze upstream, a real gateway on a free port, and a channel to it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from server.app import GatewayServer, start_server
from server.settings import CozeSettings, GatewaySettings, Settings
from tests.fakes.coze import FakeCoze

#: The prefixes of the variables the gateway reads (OTEL_*: the OpenTelemetry SDK, and whether tracing is on).
ENVIRONMENT_PREFIXES = ("AIP_", "COZE_", "OPENAI_", "OTEL_")


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep a developer's own AIP_* / COZE_* / OPENAI_* variables out of the tests."""
    for name in list(os.environ):
        if name.startswith(ENVIRONMENT_PREFIXES):
            monkeypatch.delenv(name)
    yield


@pytest.fixture
async def fake_coze() -> AsyncIterator[FakeCoze]:
    """A fake Coze Open API on 127.0.0.1."""
    async with FakeCoze() as fake:
        yield fake


def make_settings(fake_coze: FakeCoze | None, **gateway: Any) -> Settings:
    """Settings for a test gateway on a free port, pointed at ``fake_coze`` when given."""
    coze = (
        CozeSettings(_env_file=None, api_token=fake_coze.token, api_base=fake_coze.base_url)
        if fake_coze is not None
        else CozeSettings(_env_file=None)
    )
    return Settings(
        gateway=GatewaySettings(_env_file=None, address="127.0.0.1:0", **gateway),
        coze=coze,
    )


@pytest.fixture
def settings(fake_coze: FakeCoze) -> Settings:
    return make_settings(fake_coze)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[GatewayServer]:
    """A real gateway on 127.0.0.1, serving the built-in services."""
    server = await start_server(settings)
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
def target(gateway: GatewayServer) -> str:
    return f"127.0.0.1:{gateway.port}"


@pytest.fixture
async def channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> pb_grpc.AIPlatformServiceStub:
    return pb_grpc.AIPlatformServiceStub(channel)


def error_details(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """The google.rpc details of a failed call, by type name (ErrorInfo, BadRequest, RetryInfo)."""
    from google.rpc import error_details_pb2, status_pb2

    details: dict[str, object] = {}
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)  # type: ignore[arg-type]
        for any_detail in status.details:
            for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
                if any_detail.TypeName() == kind.DESCRIPTOR.full_name:
                    message = kind()
                    any_detail.Unpack(message)
                    details[kind.DESCRIPTOR.name] = message
    return details
