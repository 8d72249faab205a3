"""The Python clients against a real gateway: every method, cancellation, deadlines and errors, sync and async.

The gateway runs on the test's event loop, so the blocking client is always called from a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import tomllib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from clients import AIPlatformClient, AIPlatformError, AsyncAIPlatformClient
from clients._common import default_service_config
from providers.base import ChatEvent, ChatInput, ChatService, TextDelta
from providers.echo import EchoChatService
from providers.errors import UpstreamError, UpstreamRateLimited, UpstreamUnavailable
from providers.limits import ServiceLimits
from providers.registry import ServiceRegistry
from server.servicer import AIPlatformServicer
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.harness import gateway_for

FLAVORS = ["sync", "async"]
HI = [{"role": "user", "content": "hi"}]
HELLO = [{"role": "user", "content": "你好 big world"}]
RESUME_DATA = "上海"
RESUME_PATH = "/v1/workflow/stream_resume"


class _InThread:
    """The blocking client behind awaitable methods: each call runs in a worker thread, off the gateway's loop."""

    def __init__(self, client: AIPlatformClient) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


@contextlib.asynccontextmanager
async def _open_client(flavor: str, target: str, **settings: Any) -> AsyncIterator[Any]:
    """An AsyncAIPlatformClient, or an AIPlatformClient wrapped in _InThread."""
    if flavor == "async":
        async with AsyncAIPlatformClient(target, **settings) as client:
            yield client
        return
    sync_client = AIPlatformClient(target, **settings)
    try:
        yield _InThread(sync_client)
    finally:
        await asyncio.to_thread(sync_client.close)


@pytest.fixture(params=FLAVORS)
async def client(request: pytest.FixtureRequest, target: str) -> AsyncIterator[Any]:
    """Each test that takes ``client`` runs once with the blocking client and once with the async one."""
    async with _open_client(request.param, target) as opened:
        yield opened


async def _drain(client: Any, method: str, *args: Any, **kwargs: Any) -> list[Any]:
    """Everything ``client.<method>(...)`` yields (``iter_chat``, ``iter_workflow``, ``iter_resume_workflow``)."""
    if isinstance(client, _InThread):
        return await asyncio.to_thread(lambda: list(getattr(client.client, method)(*args, **kwargs)))
    return [item async for item in getattr(client, method)(*args, **kwargs)]


async def _first(client: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """The first item ``client.<method>(...)`` yields, leaving the loop early as callers do."""

    def first_sync() -> Any:
        for item in getattr(client.client, method)(*args, **kwargs):
            return item
        raise AssertionError("the stream was empty")

    if isinstance(client, _InThread):
        return await asyncio.to_thread(first_sync)
    async for item in getattr(client, method)(*args, **kwargs):
        return item
    raise AssertionError("the stream was empty")


# --- list_services ----------------------------------------------------------------------------


async def test_list_services_returns_every_service(client: Any) -> None:
    services = await client.list_services()
    assert [service.name for service in services] == [
        "coze",
        "coze_chatflow",
        "coze_workflow",
        "echo",
        "echo_workflow",
        "openai",
    ]
    assert all(isinstance(service, pb.ServiceInfo) for service in services)


@pytest.mark.parametrize(
    ("service_type", "expected"),
    [("chat", ["coze", "coze_chatflow", "echo", "openai"]), ("workflow", ["coze_workflow", "echo_workflow"])],
)
async def test_list_services_filters_by_type(client: Any, service_type: str, expected: list[str]) -> None:
    services = await client.list_services(service_type)
    assert [service.name for service in services] == expected


# --- chat -------------------------------------------------------------------------------------


async def test_chat_takes_dicts_tuples_and_chat_messages(client: Any) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        ("user", "first"),
        pb.ChatMessage(role="assistant", content="ok"),
        {"role": "user", "content": "the last one"},
    ]
    # delay_ms travels as the double 1.0 in the Struct; echo only takes it back as an integer.
    response = await client.chat("echo", messages, {"delay_ms": 1}, conversation_id="c-1", user_id="u-1")

    assert isinstance(response, pb.ChatResponse)
    assert response.content == "the last one"
    assert response.conversation_id == "c-1"
    assert response.finish_reason == pb.FINISH_REASON_STOP


async def test_stream_chat_calls_back_with_every_chunk_and_returns_the_text(client: Any) -> None:
    seen: list[tuple[pb.StreamChatResponse, str, str]] = []

    text = await client.stream_chat("echo", HELLO, callback=lambda data, chunk, full: seen.append((data, chunk, full)))

    assert text == "你好 big world"
    assert [chunk for _, chunk, _ in seen] == ["你好", " big", " world", ""]
    assert [full for _, _, full in seen] == ["你好", "你好 big", "你好 big world", "你好 big world"]
    assert all(isinstance(data, pb.StreamChatResponse) and data.delta == chunk for data, chunk, _ in seen)
    assert seen[-1][0].finish_reason == pb.FINISH_REASON_STOP


async def test_stream_chat_without_a_callback_returns_the_text(client: Any) -> None:
    assert await client.stream_chat("echo", HELLO) == "你好 big world"


async def test_async_stream_chat_awaits_a_coroutine_callback(target: str) -> None:
    seen: list[str] = []

    async def on_chunk(data: pb.StreamChatResponse, chunk: str, full_text: str) -> None:
        await asyncio.sleep(0)
        seen.append(full_text)

    async with AsyncAIPlatformClient(target) as client:
        text = await client.stream_chat("echo", HELLO, callback=on_chunk)

    assert text == "你好 big world"
    assert seen == ["你好", "你好 big", "你好 big world", "你好 big world"]


async def test_iter_chat_yields_every_chunk(client: Any) -> None:
    chunks = await _drain(client, "iter_chat", "echo", HELLO, conversation_id="c-2")

    assert [chunk.delta for chunk in chunks] == ["你好", " big", " world", ""]
    assert chunks[-1].finish_reason == pb.FINISH_REASON_STOP
    assert chunks[-1].conversation_id == "c-2"


async def test_chat_returns_the_tool_calls_the_bot_asks_for(client: Any) -> None:
    response = await client.chat("coze", HI, {"bot_id": fake.BOT_REQUIRES_ACTION})

    assert isinstance(response, pb.ChatResponse)
    assert response.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(call.id, call.type, call.function_name, call.arguments) for call in response.tool_calls] == [
        (fake.TOOL_CALL_ID, "function", fake.TOOL_CALL_NAME, fake.TOOL_CALL_ARGUMENTS)
    ]
    # What the caller needs to submit the tool outputs for this turn.
    assert response.conversation_id and response.chat_id


async def test_chat_returns_follow_ups_apart_from_the_answer(client: Any) -> None:
    response = await client.chat("coze", HI, {"bot_id": fake.BOT_FOLLOW_UPS})

    assert list(response.follow_ups) == list(fake.FOLLOW_UP_QUESTIONS)
    assert response.content == fake.DEFAULT_ANSWER


# --- workflow ---------------------------------------------------------------------------------


async def test_workflow_returns_the_output_with_integral_numbers_as_integers(client: Any) -> None:
    parameters = {"n": 3, "ratio": 0.5, "ok": True, "city": "北京", "nested": {"ids": ["1", 2]}}

    response = await client.workflow("echo_workflow", parameters)

    assert isinstance(response, pb.RunWorkflowResponse)
    output = json.loads(response.output)["output"]
    assert output == parameters
    assert type(output["n"]) is int
    assert type(output["nested"]["ids"][1]) is int


async def test_stream_workflow_calls_back_with_every_event_and_returns_the_contents(client: Any) -> None:
    seen: list[tuple[pb.StreamWorkflowResponse, str, str]] = []

    text = await client.stream_workflow(
        "echo_workflow", {"n": 3, "city": "北京"}, callback=lambda data, chunk, full: seen.append((data, chunk, full))
    )

    events = [data for data, _, _ in seen]
    assert [(event.node_title, event.content) for event in events[:-1]] == [("city", '"北京"'), ("n", "3")]
    assert events[-1].node_title == "End"
    assert json.loads(events[-1].content) == {"output": {"n": 3, "city": "北京"}}
    assert all(chunk == data.content for data, chunk, _ in seen)
    assert [full for _, _, full in seen] == list(itertools.accumulate(chunk for _, chunk, _ in seen))
    assert text == "".join(event.content for event in events)


async def test_iter_workflow_yields_every_event(client: Any) -> None:
    events = await _drain(client, "iter_workflow", "echo_workflow", {"city": "北京"})

    assert all(isinstance(event, pb.StreamWorkflowResponse) for event in events)
    assert [(event.node_title, event.content) for event in events] == [
        ("city", '"北京"'),
        ("End", '{"output": {"city": "北京"}}'),
    ]


# --- resume_workflow --------------------------------------------------------------------------


async def _interrupt(client: Any) -> pb.WorkflowInterrupt:
    """Run the fake's interrupting workflow with ``stream_workflow``; the interrupt it stopped at."""
    interrupts: list[pb.WorkflowInterrupt] = []

    def on_event(data: pb.StreamWorkflowResponse, chunk: str, full_text: str) -> None:
        if data.HasField("interrupt"):
            interrupts.append(data.interrupt)

    await client.stream_workflow("coze_workflow", workflow_id=fake.WORKFLOW_INTERRUPT, callback=on_event)
    (interrupt,) = interrupts
    return interrupt


def _resume_arguments(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of ``resume_workflow`` that answer the fake's interrupt."""
    return {
        "workflow_id": fake.WORKFLOW_INTERRUPT,
        "event_id": fake.INTERRUPT_EVENT_ID,
        "resume_data": RESUME_DATA,
        "interrupt_type": fake.INTERRUPT_TYPE,
        **overrides,
    }


async def test_resume_workflow_answers_the_interrupt_of_stream_workflow_and_returns_the_contents(
    client: Any, fake_coze: FakeCoze
) -> None:
    interrupt = await _interrupt(client)
    assert (interrupt.event_id, interrupt.type) == (fake.INTERRUPT_EVENT_ID, fake.INTERRUPT_TYPE)
    seen: list[tuple[pb.ResumeWorkflowResponse, str, str]] = []

    text = await client.resume_workflow(
        "coze_workflow",
        event_id=interrupt.event_id,
        resume_data=RESUME_DATA,
        interrupt_type=interrupt.type,
        workflow_id=fake.WORKFLOW_INTERRUPT,
        callback=lambda data, chunk, full: seen.append((data, chunk, full)),
    )

    events = [data for data, _, _ in seen]
    assert all(isinstance(event, pb.ResumeWorkflowResponse) for event in events)
    # The End node's event, then Done's debug_url on a message of its own.
    assert events[-2].node_title == "End" and events[-1].debug_url
    assert RESUME_DATA in json.loads(events[-2].content)["output"]
    assert not any(event.HasField("interrupt") for event in events)
    assert all(chunk == data.content for data, chunk, _ in seen)
    assert [full for _, _, full in seen] == list(itertools.accumulate(chunk for _, chunk, _ in seen))
    assert text == "".join(event.content for event in events)
    (sent,) = [request for request in fake_coze.requests if request.path == RESUME_PATH]
    assert sent.json == {
        "workflow_id": fake.WORKFLOW_INTERRUPT,
        "event_id": interrupt.event_id,
        "resume_data": RESUME_DATA,
        "interrupt_type": interrupt.type,
    }


async def test_iter_resume_workflow_yields_every_event(client: Any) -> None:
    interrupt = await _interrupt(client)

    events = await _drain(
        client, "iter_resume_workflow", "coze_workflow", **_resume_arguments(event_id=interrupt.event_id)
    )

    assert all(isinstance(event, pb.ResumeWorkflowResponse) for event in events)
    assert [(event.node_title, event.node_is_finish) for event in events] == [("End", True), ("", False)]
    assert RESUME_DATA in json.loads(events[0].content)["output"]
    assert events[0].usage.total_tokens == fake.WORKFLOW_USAGE_TOKEN_COUNT


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda client, **kwargs: client.resume_workflow("coze_workflow", **kwargs), id="resume_workflow"),
        pytest.param(
            lambda client, **kwargs: _drain(client, "iter_resume_workflow", "coze_workflow", **kwargs),
            id="iter_resume_workflow",
        ),
    ],
)
async def test_resume_of_an_unknown_event_raises_not_found(client: Any, call: Callable[..., Awaitable[Any]]) -> None:
    with pytest.raises(AIPlatformError) as raised:
        await call(client, **_resume_arguments(event_id="7404830425073352713/1"))

    error = raised.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "UPSTREAM_NOT_FOUND"
    assert error.error_metadata["upstream_code"] == "4314"


async def test_leaving_iter_resume_workflow_early_closes_the_upstream_stream(client: Any, fake_coze: FakeCoze) -> None:
    arguments = _resume_arguments(workflow_id=fake.WORKFLOW_STALL)

    first = await _first(client, "iter_resume_workflow", "coze_workflow", **arguments)

    assert first.node_title == "End"
    # Generous bound: the fake stalls until its client goes away, so only the cancel can close it.
    disconnect = await fake_coze.wait_for_disconnect(timeout=5)
    assert (disconnect.path, disconnect.scenario) == (RESUME_PATH, fake.WORKFLOW_STALL)


# --- cancellation -----------------------------------------------------------------------------


class _EndlessChatService(ChatService):
    """Streams a word every 20 ms until the caller goes away; ``closed`` is set when its stream ends."""

    provider = "endless"

    def __init__(self) -> None:
        super().__init__("endless", "test")
        self.closed = asyncio.Event()

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        try:
            while True:
                yield TextDelta("word ")
                await asyncio.sleep(0.02)
        finally:
            self.closed.set()


@pytest.fixture
async def endless() -> AsyncIterator[tuple[_EndlessChatService, str]]:
    """A gateway serving an endless chat service and echo; yields the service and the gateway's target."""
    service = _EndlessChatService()
    async with gateway_for(services=[service, EchoChatService()]) as gateway:
        yield service, gateway.target


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_leaving_iter_chat_early_cancels_the_call_on_the_gateway(
    endless: tuple[_EndlessChatService, str], flavor: str
) -> None:
    service, target = endless
    async with _open_client(flavor, target) as client:
        first = await _first(client, "iter_chat", "endless", HI)
        assert first.delta == "word "
        # Generous bound: the stream never ends by itself, so only the cancel can close it.
        await asyncio.wait_for(service.closed.wait(), timeout=5)
        assert (await client.chat("echo", HI)).content == "hi"


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_leaving_a_slow_echo_early_lets_the_next_call_through(target: str, flavor: str) -> None:
    async with _open_client(flavor, target) as client:
        slow = {"delay_ms": 200}
        first = await _first(client, "iter_chat", "echo", [{"role": "user", "content": "word " * 50}], slow)
        assert first.delta == "word"
        assert await client.stream_chat("echo", HELLO) == "你好 big world"


class _StopStreaming(Exception):
    """Raised by a test callback."""


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_callback_that_raises_cancels_the_call(endless: tuple[_EndlessChatService, str], flavor: str) -> None:
    service, target = endless

    def stop(data: pb.StreamChatResponse, chunk: str, full_text: str) -> None:
        raise _StopStreaming

    async with _open_client(flavor, target) as client:
        with pytest.raises(_StopStreaming):
            await client.stream_chat("endless", HI, callback=stop)
        await asyncio.wait_for(service.closed.wait(), timeout=5)


# --- errors -----------------------------------------------------------------------------------


def _calls(service_name: str) -> list[Any]:
    """Every RPC-making method, called for ``service_name``, as parameters of a test."""
    return [
        pytest.param(lambda client: client.chat(service_name, HI), id="chat"),
        pytest.param(lambda client: client.stream_chat(service_name, HI), id="stream_chat"),
        pytest.param(lambda client: _drain(client, "iter_chat", service_name, HI), id="iter_chat"),
        pytest.param(lambda client: client.workflow(service_name), id="workflow"),
        pytest.param(lambda client: client.stream_workflow(service_name), id="stream_workflow"),
        pytest.param(lambda client: _drain(client, "iter_workflow", service_name), id="iter_workflow"),
        pytest.param(lambda client: client.resume_workflow(service_name, **_resume_arguments()), id="resume_workflow"),
        pytest.param(
            lambda client: _drain(client, "iter_resume_workflow", service_name, **_resume_arguments()),
            id="iter_resume_workflow",
        ),
    ]


@pytest.mark.parametrize("call", _calls("nope"))
async def test_unknown_service_raises_not_found(client: Any, call: Callable[[Any], Awaitable[Any]]) -> None:
    with pytest.raises(AIPlatformError) as raised:
        await call(client)

    error = raised.value
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in error.message
    assert str(error) == f"NOT_FOUND: {error.message}"
    assert (error.reason, error.domain) == ("SERVICE_NOT_FOUND", "aiplatform.v1")
    assert isinstance(error.__cause__, grpc.RpcError)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda client, messages: client.chat("echo", messages), id="chat"),
        pytest.param(lambda client, messages: client.stream_chat("echo", messages), id="stream_chat"),
        pytest.param(lambda client, messages: _drain(client, "iter_chat", "echo", messages), id="iter_chat"),
    ],
)
async def test_bad_role_raises_invalid_argument_naming_the_field(
    client: Any, call: Callable[[Any, Any], Awaitable[Any]]
) -> None:
    with pytest.raises(AIPlatformError) as raised:
        await call(client, [("bot", "hi")])

    error = raised.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_REQUEST"
    assert error.error_info is not None and error.error_info.domain == "aiplatform.v1"
    bad_request = next(detail for detail in error.details if isinstance(detail, error_details_pb2.BadRequest))
    assert bad_request.field_violations[0].field == "messages[0].role"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda client, **kwargs: client.chat("echo", HI, **kwargs), id="chat"),
        pytest.param(lambda client, **kwargs: client.stream_chat("echo", HI, **kwargs), id="stream_chat"),
        pytest.param(lambda client, **kwargs: _drain(client, "iter_chat", "echo", HI, **kwargs), id="iter_chat"),
    ],
)
async def test_per_call_timeout_raises_deadline_exceeded(client: Any, call: Callable[..., Awaitable[Any]]) -> None:
    with pytest.raises(AIPlatformError) as raised:
        await call(client, parameters={"delay_ms": 1000}, timeout=0.2)

    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert raised.value.error_info is None  # the deadline is the client's own: no gateway details


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_client_timeout_applies_unless_the_call_overrides_it(target: str, flavor: str) -> None:
    async with _open_client(flavor, target, timeout=0.2) as client:
        with pytest.raises(AIPlatformError) as raised:
            await client.chat("echo", HI, {"delay_ms": 1000})
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

        answer = await client.chat("echo", HI, {"delay_ms": 500}, timeout=None)
        assert answer.content == "hi"


# --- metadata ---------------------------------------------------------------------------------


class _MetadataRecordingServicer(AIPlatformServicer):
    """The real servicer, remembering the metadata of each ListServices call."""

    def __init__(self, registry: ServiceRegistry) -> None:
        super().__init__(registry)
        self.seen: list[dict[str, str]] = []

    async def ListServices(self, request: pb.ListServicesRequest, context: Any) -> pb.ListServicesResponse:
        self.seen.append({key: value for key, value in context.invocation_metadata() if key.startswith("x-")})
        return await super().ListServices(request, context)


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_call_metadata_is_sent_over_the_clients_replacing_repeated_keys(flavor: str) -> None:
    servicer = _MetadataRecordingServicer(ServiceRegistry([EchoChatService()]))
    server = grpc.aio.server()
    pb_grpc.add_AIPlatformServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        client_metadata = [("x-team", "search"), ("x-trace", "client")]
        async with _open_client(flavor, f"127.0.0.1:{port}", metadata=client_metadata) as client:
            await client.list_services()
            await client.list_services(metadata=[("x-trace", "call")])
    finally:
        await server.stop(0)

    assert servicer.seen == [{"x-team": "search", "x-trace": "client"}, {"x-team": "search", "x-trace": "call"}]


# --- arguments refused before any call ----------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "error_type"),
    [
        ("hi", TypeError),
        ({"role": "user", "content": "hi"}, TypeError),
        ([42], TypeError),
        ([("user",)], TypeError),
        ([{"role": "user"}], ValueError),
    ],
)
def test_malformed_messages_are_refused_before_any_call(messages: Any, error_type: type[Exception]) -> None:
    # Nothing listens on port 1: the request is refused before the client tries to connect.
    with AIPlatformClient("127.0.0.1:1") as client, pytest.raises(error_type):
        client.chat("echo", messages)


@pytest.mark.parametrize("number", [7379462189365198898, 2**53, -(2**53)])
def test_integers_a_struct_cannot_hold_exactly_are_refused(number: int) -> None:
    # The range the gateway refuses too: past 2**53 - 1 a double no longer tells integers apart.
    with AIPlatformClient("127.0.0.1:1") as client, pytest.raises(ValueError, match=r"parameters\.ids\[0\]"):
        client.workflow("coze_workflow", {"ids": [number]})


# --- the default service config ---------------------------------------------------------------


ROOT = Path(__file__).parents[1]


class _FlakyEchoService(EchoChatService):
    """Echo whose first ``failures`` calls fail like a broken upstream: before any output, or after one chunk."""

    def __init__(
        self, failures: int, error: type[UpstreamError] = UpstreamUnavailable, after_first_chunk: bool = False
    ) -> None:
        super().__init__("flaky")
        self.failures = failures
        self.error = error
        self.after_first_chunk = after_first_chunk
        self.attempts = 0

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        self.attempts += 1
        failing = self.attempts <= self.failures
        if failing and not self.after_first_chunk:
            raise self.error("upstream down", provider="flaky")
        async for event in super().stream_chat(request):
            yield event
            if failing:
                raise self.error("upstream cut", provider="flaky")


@contextlib.asynccontextmanager
async def _gateway_with(service: ChatService) -> AsyncIterator[str]:
    """A real gateway serving ``service`` that does not retry upstream failures itself; yields its target."""
    async with gateway_for(services=[(service, ServiceLimits(max_attempts=1))]) as gateway:
        yield gateway.target


class _StoppingReplicaServicer(pb_grpc.AIPlatformServiceServicer):
    """Answers UNAVAILABLE before any message, as a replica that is stopping does, then echoes."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.attempts = 0

    async def _refuse(self, context: Any) -> None:
        self.attempts += 1
        if self.attempts <= self.refusals:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stopping")

    async def Chat(self, request: pb.ChatRequest, context: Any) -> pb.ChatResponse:
        await self._refuse(context)
        return pb.ChatResponse(content=request.messages[-1].content)

    async def StreamChat(self, request: pb.StreamChatRequest, context: Any) -> AsyncIterator[pb.StreamChatResponse]:
        await self._refuse(context)
        yield pb.StreamChatResponse(delta=request.messages[-1].content)


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda client: client.chat("any", HI), id="chat"),
        pytest.param(lambda client: client.stream_chat("any", HI), id="stream_chat"),
    ],
)
async def test_unavailable_before_the_first_message_is_retried_up_to_three_attempts(
    flavor: str, call: Callable[[Any], Awaitable[Any]]
) -> None:
    servicer = _StoppingReplicaServicer(refusals=2)
    server = grpc.aio.server()
    pb_grpc.add_AIPlatformServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with _open_client(flavor, f"127.0.0.1:{port}", timeout=10) as client:
            answer = await call(client)
            assert (answer if isinstance(answer, str) else answer.content) == "hi"
            assert servicer.attempts == 3

            servicer.refusals, servicer.attempts = 3, 0
            with pytest.raises(AIPlatformError) as raised:
                await call(client)
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE
            assert servicer.attempts == 3
    finally:
        await server.stop(0)


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_stream_that_fails_after_its_first_message_is_not_retried(flavor: str) -> None:
    service = _FlakyEchoService(failures=1, after_first_chunk=True)
    chunks: list[str] = []
    async with _gateway_with(service) as target, _open_client(flavor, target, timeout=10) as client:
        with pytest.raises(AIPlatformError) as raised:
            await client.stream_chat("flaky", HELLO, callback=lambda data, chunk, full: chunks.append(chunk))

    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert chunks == ["你好"]  # once, never replayed
    assert service.attempts == 1


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_failures_other_than_unavailable_are_not_retried(flavor: str) -> None:
    service = _FlakyEchoService(failures=1, error=UpstreamRateLimited)
    async with _gateway_with(service) as target, _open_client(flavor, target, timeout=10) as client:
        with pytest.raises(AIPlatformError) as raised:
            await client.chat("flaky", HI)

    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert service.attempts == 1


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_without_a_service_config_nothing_is_retried(flavor: str) -> None:
    service = _FlakyEchoService(failures=1)
    async with (
        _gateway_with(service) as target,
        _open_client(flavor, target, timeout=10, service_config=None) as client,
    ):
        with pytest.raises(AIPlatformError) as raised:
            await client.chat("flaky", HI)

    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert service.attempts == 1


class _RefusingServicer(AIPlatformServicer):
    """Answers its first Chat with CANCELLED before any message, as grpc does for a call that arrives during stop."""

    def __init__(self) -> None:
        super().__init__(ServiceRegistry([EchoChatService()]))
        self.attempts = 0

    async def Chat(self, request: pb.ChatRequest, context: Any) -> pb.ChatResponse:
        self.attempts += 1
        if self.attempts == 1:
            await context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return await super().Chat(request, context)


@contextlib.asynccontextmanager
async def _bare_server(servicer: AIPlatformServicer, port: int = 0) -> AsyncIterator[str]:
    server = grpc.aio.server()
    pb_grpc.add_AIPlatformServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_cancelled_before_the_first_message_is_retried(flavor: str) -> None:
    # grpc.aio answers CANCELLED (not UNAVAILABLE) to calls that reach a server just as it stops
    # (grpc/grpc#41785); tests/test_replicas.py loses calls that way without this retry.
    servicer = _RefusingServicer()
    async with _bare_server(servicer) as target, _open_client(flavor, target, timeout=10) as client:
        assert (await client.chat("echo", HI)).content == "hi"
    assert servicer.attempts == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_call_waits_for_a_gateway_that_is_not_listening_yet(flavor: str) -> None:
    port = _free_port()
    async with _open_client(flavor, f"127.0.0.1:{port}", timeout=10) as client:
        call = asyncio.ensure_future(client.chat("echo", HI))
        await asyncio.sleep(0.3)
        assert not call.done()
        async with _bare_server(AIPlatformServicer(ServiceRegistry([EchoChatService()])), port):
            assert (await call).content == "hi"


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_without_a_service_config_a_call_fails_at_once_when_no_gateway_listens(flavor: str) -> None:
    async with _open_client(flavor, f"127.0.0.1:{_free_port()}", timeout=10, service_config=None) as client:
        with pytest.raises(AIPlatformError) as raised:
            await asyncio.wait_for(client.chat("echo", HI), 5)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE


def _short_deadline_config() -> dict[str, Any]:
    config = default_service_config()
    config["methodConfig"][0]["timeout"] = "0.3s"
    return config


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize(
    "given_as",
    [
        pytest.param(lambda: {"service_config": _short_deadline_config()}, id="dict"),
        pytest.param(lambda: {"service_config": json.dumps(_short_deadline_config())}, id="json-text"),
        pytest.param(
            lambda: {"options": [("grpc.service_config", json.dumps(_short_deadline_config()))]}, id="channel-option"
        ),
    ],
)
async def test_a_call_without_a_timeout_gets_the_service_configs_deadline(
    target: str, flavor: str, given_as: Callable[[], dict[str, Any]]
) -> None:
    async with _open_client(flavor, target, **given_as()) as client:
        with pytest.raises(AIPlatformError) as raised:
            await client.chat("echo", HI, {"delay_ms": 1000})
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # A longer timeout of the call's own does not lift it: gRPC takes the shorter of the two.
        with pytest.raises(AIPlatformError) as raised:
            await client.chat("echo", HI, {"delay_ms": 1000}, timeout=5)
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_default_service_config_is_the_documented_json_file() -> None:
    config = default_service_config()
    assert config == json.loads((ROOT / "clients" / "service_config.json").read_text(encoding="utf-8"))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method_config,) = config["methodConfig"]
    assert method_config["name"] == [{"service": "aiplatform.v1.AIPlatformService"}]
    assert (method_config["waitForReady"], method_config["timeout"]) == (True, "600s")
    assert method_config["retryPolicy"] == {
        "maxAttempts": 3,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
    }
    config["methodConfig"].clear()
    assert default_service_config()["methodConfig"], "each call returns a fresh copy"


def test_the_service_config_file_ships_with_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "service_config.json" in pyproject["tool"]["setuptools"]["package-data"]["clients"]


async def test_an_upstream_failure_the_gateway_retried_is_not_retried_again_by_the_client(
    target: str, fake_coze: Any
) -> None:
    """The gateway answers with retry pushback, so its 3 attempts do not become 3 x 3."""
    from tests.fakes import coze as fake

    def call() -> AIPlatformError:
        with AIPlatformClient(target, timeout=20) as client, pytest.raises(AIPlatformError) as raised:
            client.chat("coze", [{"role": "user", "content": "hi"}], parameters={"bot_id": fake.BOT_HTTP_502})
        return raised.value

    error = await asyncio.to_thread(call)
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert len([request for request in fake_coze.requests if request.path == "/v3/chat"]) == 3
