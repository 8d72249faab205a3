"""Both fake upstreams behind one interface, for tests that run the same fault against every provider.

A `Fault` is named once and mapped to the id that selects it in each fake (a Coze ``bot_id``,
an OpenAI ``model``). An `Upstream` is a started fake with what the gateway needs to reach it:
the service to register, and requests that select a fault. `serving` starts a real gateway on a
free port with the services and limits a test chooses (`tests.harness.gateway_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from providers.base import ChatService
from providers.coze import CozeChatService, CozeClients
from providers.openai import OpenAIChatService
from providers.registry import ServiceRegistry
from tests.fakes import coze, openai
from tests.fakes._server import FakeUpstream
from tests.harness import GatewayUnderTest, GuardedService, gateway_for

_Message = TypeVar("_Message")

PROVIDERS = ("coze", "openai")


class Fault(enum.StrEnum):
    """A behaviour both fakes can show, whatever id selects it in each."""

    NORMAL = "normal"
    FLAKY = "flaky"  # fails the first `flaky_failures` requests with a 502, then answers
    RATE_LIMITED_ONCE = "rate-limited-once"  # one 429 with a short Retry-After, then answers
    RATE_LIMITED_NO_RETRY_AFTER = "rate-limited-no-retry-after"
    BAD_REQUEST = "bad-request"
    SERVER_ERROR = "server-error"  # a 5xx before any event
    CUT = "cut"  # two deltas, then the connection is cut
    ERROR_EVENT = "error-event"  # two deltas, then an error in the stream
    STALL = "stall"  # two deltas, then silence (a whole answer: silence)
    STALL_AT_START = "stall-at-start"  # silence before the first delta
    SLOW = "slow"  # one delta every `slow_interval` seconds
    UNKNOWN_EVENTS = "unknown-events"  # the answer, with events of kinds the gateway does not know
    FLOOD = "flood"  # FLOOD_CHUNKS tiny deltas as fast as the socket allows
    BURST_CUT = "burst-cut"  # BURST_PIECES deltas sent at once, then a hang-up (a whole answer: half, then a hang-up)
    ECHO_AUTH = "echo-auth"  # an error answer whose text quotes the request's headers, Authorization included
    HUGE_ERROR = "huge-error"  # an error answer with a 1 MiB message
    CUT_AT_START = "cut-at-start"  # the upstream started (Coze created the chat), then the cut, before any text


_IDS: dict[str, dict[Fault, str]] = {
    "coze": {
        Fault.NORMAL: coze.BOT_NORMAL,
        Fault.FLAKY: coze.BOT_FLAKY,
        Fault.RATE_LIMITED_ONCE: coze.BOT_RATE_LIMITED_ONCE,
        Fault.RATE_LIMITED_NO_RETRY_AFTER: coze.BOT_RATE_LIMITED_NO_RETRY_AFTER,
        Fault.BAD_REQUEST: coze.BOT_BAD_REQUEST,
        Fault.SERVER_ERROR: coze.BOT_HTTP_502,
        Fault.CUT: coze.BOT_CUT,
        Fault.ERROR_EVENT: coze.BOT_ERROR_EVENT,
        Fault.STALL: coze.BOT_STALL,
        Fault.STALL_AT_START: coze.BOT_STALL_AT_START,
        Fault.SLOW: coze.BOT_SLOW,
        Fault.UNKNOWN_EVENTS: coze.BOT_VERBOSE_AND_UNKNOWN,
        Fault.FLOOD: coze.BOT_FLOOD,
        Fault.BURST_CUT: coze.BOT_BURST_CUT,
        Fault.CUT_AT_START: coze.BOT_CUT_AFTER_CREATED,
        Fault.ECHO_AUTH: coze.BOT_ECHO_AUTH,
        Fault.HUGE_ERROR: coze.BOT_HUGE_ERROR,
    },
    "openai": {
        Fault.NORMAL: openai.MODEL_NORMAL,
        Fault.FLAKY: openai.MODEL_FLAKY,
        Fault.RATE_LIMITED_ONCE: openai.MODEL_RATE_LIMITED_ONCE,
        Fault.RATE_LIMITED_NO_RETRY_AFTER: openai.MODEL_RATE_LIMITED_NO_RETRY_AFTER,
        Fault.BAD_REQUEST: openai.MODEL_BAD_REQUEST,
        Fault.SERVER_ERROR: openai.MODEL_SERVER_ERROR,
        Fault.CUT: openai.MODEL_CUT,
        Fault.ERROR_EVENT: openai.MODEL_ERROR_IN_STREAM,
        Fault.STALL: openai.MODEL_STALL,
        Fault.STALL_AT_START: openai.MODEL_STALL_AT_START,
        Fault.SLOW: openai.MODEL_SLOW,
        Fault.UNKNOWN_EVENTS: openai.MODEL_UNKNOWN_EVENTS,
        Fault.FLOOD: openai.MODEL_FLOOD,
        Fault.BURST_CUT: openai.MODEL_BURST_CUT,
        Fault.CUT_AT_START: openai.MODEL_CUT_AT_START,
        Fault.ECHO_AUTH: openai.MODEL_ECHO_AUTH,
        Fault.HUGE_ERROR: openai.MODEL_HUGE_ERROR,
    },
}


class Upstream:
    """A started fake upstream of one provider, and how the gateway reaches it."""

    def __init__(self, provider: str, fake: coze.FakeCoze | openai.FakeOpenAI) -> None:
        self.provider = provider
        self.fake = fake
        #: The gateway service's name (the provider's name).
        self.service_name = provider
        #: The retry-after the RATE_LIMITED_ONCE fault asks for, in seconds.
        self.short_retry_after = (
            coze.SHORT_RETRY_AFTER_SECONDS if provider == "coze" else openai.SHORT_RETRY_AFTER_MS / 1000
        )
        self._chat_path = "/v3/chat" if provider == "coze" else "/v1/chat/completions"
        self._answer = coze.split_answer(fake.answer) if provider == "coze" else openai.split_answer(fake.answer)

    @property
    def server(self) -> FakeUpstream[Any]:
        """The fake as its shared base: disconnects, open_streams, slow_interval, flood_sent, ..."""
        return self.fake

    @property
    def port(self) -> int:
        """The fake's port on 127.0.0.1."""
        return int(self.fake.base_url.split(":")[2].split("/")[0])

    @property
    def answer_pieces(self) -> list[str]:
        """The deltas of the normal answer, in order."""
        return list(self._answer)

    def chat_requests(self) -> list[Any]:
        """The chat requests the fake received (not Coze's /v3/chat/cancel and the like)."""
        return [request for request in self.fake.requests if request.path == self._chat_path]

    async def wait_for_chat_requests(self, count: int = 1, timeout: float = 2.0) -> list[Any]:
        """The chat requests, once there are at least ``count``."""
        return await self.server.wait_for_requests(self._chat_path, count, timeout)

    def service(self, *, credential: str | None = None) -> ChatService:
        """A new gateway service talking to the fake (with the fake's key unless ``credential`` is given)."""
        if isinstance(self.fake, coze.FakeCoze):
            clients = CozeClients(token=credential or self.fake.token, base_url=self.fake.base_url)
            return CozeChatService(self.service_name, clients)
        return OpenAIChatService(
            self.service_name,
            base_url=self.fake.base_url,
            api_key=credential or self.fake.api_key,
            default_model=openai.MODEL_NORMAL,
        )

    def scenario(self, fault: Fault) -> str:
        """The id that selects ``fault`` in this fake."""
        return _IDS[self.provider][fault]

    def stream_request(self, fault: Fault = Fault.NORMAL) -> pb.StreamChatRequest:
        """A StreamChat request that selects ``fault``."""
        return pb.StreamChatRequest(service_name=self.service_name, messages=_HI, parameters=self._parameters(fault))

    def chat_request(self, fault: Fault = Fault.NORMAL) -> pb.ChatRequest:
        """A Chat request that selects ``fault``."""
        return pb.ChatRequest(service_name=self.service_name, messages=_HI, parameters=self._parameters(fault))

    def _parameters(self, fault: Fault) -> struct_pb2.Struct:
        parameters = struct_pb2.Struct()
        parameters.update({"bot_id" if self.provider == "coze" else "model": self.scenario(fault)})
        return parameters


_HI = [pb.ChatMessage(role="user", content="hi")]

_FAKES: dict[str, Callable[[], coze.FakeCoze | openai.FakeOpenAI]] = {
    "coze": coze.FakeCoze,
    "openai": openai.FakeOpenAI,
}


@contextlib.asynccontextmanager
async def open_upstream(provider: str) -> AsyncIterator[Upstream]:
    """A started fake of ``provider`` ("coze" or "openai"), stopped at the end."""
    async with _FAKES[provider]() as fake:
        yield Upstream(provider, fake)


#: A started gateway: ``.stub``, ``.registry`` (for each service's guard), ``.server``, ``.target``, ``.channel``.
Gateway = GatewayUnderTest


@contextlib.asynccontextmanager
async def serving(*services: GuardedService) -> AsyncIterator[Gateway]:
    """A real gateway on 127.0.0.1 serving ``services``, each under its limits, and a channel to it."""
    async with gateway_for(registry=ServiceRegistry(), services=services) as gateway:
        yield gateway


async def collect(call: AsyncIterable[_Message]) -> tuple[list[_Message], grpc.aio.AioRpcError | None]:
    """Every message of a stream, and the error it ended with (None when OK)."""
    received: list[_Message] = []
    try:
        async for response in call:
            received.append(response)
    except grpc.aio.AioRpcError as error:
        return received, error
    return received, None


async def answer(call: Any) -> tuple[pb.ChatResponse | None, grpc.aio.AioRpcError | None]:
    """A unary call's response, or the error it ended with."""
    try:
        return await call, None
    except grpc.aio.AioRpcError as error:
        return None, error


async def until(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Return once ``condition()`` holds; raise TimeoutError if it does not within ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling a counter is simplest here
            await asyncio.sleep(0.005)


async def run_bounded(jobs: Iterable[Callable[[], Awaitable[None]]], concurrency: int) -> None:
    """Run ``jobs`` (taken lazily, in order) with at most ``concurrency`` running at once.

    A fixed set of workers takes the next job when it is free, so memory stays that of
    ``concurrency`` calls however many jobs there are.
    """
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await job()

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
