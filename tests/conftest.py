"""Shared fixtures: a fake Coze upstream, a real gateway with a channel and stub to it (tests/harness.py), a Redis."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.openai import OpenAIChatService
from server.settings import Settings
from tests.fakes import openai as openai_fake
from tests.fakes.coze import FakeCoze
from tests.fakes.openai import FakeOpenAI
from tests.harness import GatewayUnderTest, gateway_for, make_settings
from tests.redis_server import RedisServer, running_redis

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


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI-compatible API on 127.0.0.1."""
    async with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
async def openai_gateway(fake_openai: FakeOpenAI) -> AsyncIterator[GatewayUnderTest]:
    """A gateway whose only service, ``openai``, talks to the fake (default model MODEL_NORMAL)."""
    service = OpenAIChatService(
        "openai", base_url=fake_openai.base_url, api_key=fake_openai.api_key, default_model=openai_fake.MODEL_NORMAL
    )
    async with gateway_for(services=[service]) as started:
        yield started


@pytest.fixture
async def redis_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own on 127.0.0.1 (``.url``, ``stop()``, ``start()``; tests/redis_server.py).

    Skips when redis-server is not installed, and fails instead in CI (AIP_CI set).
    """
    async with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def settings(fake_coze: FakeCoze) -> Settings:
    return make_settings(fake_coze)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[GatewayUnderTest]:
    """A real gateway on 127.0.0.1, serving the built-in services, with a channel and stub to it."""
    async with gateway_for(settings) as started:
        yield started


@pytest.fixture
def target(gateway: GatewayUnderTest) -> str:
    return gateway.target


@pytest.fixture
def channel(gateway: GatewayUnderTest) -> grpc.aio.Channel:
    return gateway.channel


@pytest.fixture
def stub(gateway: GatewayUnderTest) -> pb_grpc.AIPlatformServiceStub:
    return gateway.stub


__all__ = ["ENVIRONMENT_PREFIXES", "error_details", "make_settings"]


def error_details(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """The google.rpc details of a failed call, by type name (ErrorInfo, BadRequest, RetryInfo, QuotaFailure)."""
    from google.rpc import error_details_pb2, status_pb2

    details: dict[str, object] = {}
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)  # type: ignore[arg-type]
        for any_detail in status.details:
            for kind in (
                error_details_pb2.ErrorInfo,
                error_details_pb2.BadRequest,
                error_details_pb2.RetryInfo,
                error_details_pb2.QuotaFailure,
            ):
                if any_detail.TypeName() == kind.DESCRIPTOR.full_name:
                    message = kind()
                    any_detail.Unpack(message)
                    details[kind.DESCRIPTOR.name] = message
    return details
