"""Random and malformed requests to every RPC: each gets a defined status, and the server keeps serving.

Hypothesis drives a synchronous client, so the gateway (and a fake Coze behind it)
runs on an event loop of its own in a background thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from server.app import GatewayServer
from tests.fakes.coze import FakeCoze
from tests.harness import gateway_for

#: Every status a request may end with. INTERNAL (a bug) and DEADLINE_EXCEEDED (a hang) are not here.
DEFINED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SERVICES = ["echo", "echo_workflow", "coze", "coze_workflow", "openai", "", "nope"]


class _BackgroundGateway:
    """A gateway and a fake Coze on their own event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.fake = FakeCoze()
        self._run(self.fake.start())
        # The harness's gateway, entered on the background loop; the tests call it through a blocking
        # channel of their own (hypothesis runs them synchronously).
        self._gateway = gateway_for(
            fake_coze=self.fake, max_messages=8, max_message_bytes=2048, max_parameters_bytes=1024
        )
        self.server: GatewayServer = self._run(self._gateway.__aenter__()).server
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = pb_grpc.AIPlatformServiceStub(self.channel)

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def close(self) -> None:
        self.channel.close()
        self._run(self._gateway.__aexit__(None, None, None))
        self._run(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def background_gateway() -> Iterator[_BackgroundGateway]:
    gateway = _BackgroundGateway()
    try:
        yield gateway
    finally:
        gateway.close()


_json_leaf = (
    st.none()
    | st.booleans()
    | st.text(max_size=20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(2**60), max_value=2**60)
)


def _json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function, not a lambda inside the call: hypothesis checks that `extend` uses its
    # argument by parsing its source lines, and a function's own lines always parse on their own.
    return st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)


_json_value = st.recursive(_json_leaf, _json_containers, max_leaves=12)
_parameters = st.dictionaries(
    st.sampled_from(["bot_id", "delay_ms", "model", "temperature", "custom_variables", "x", ""]) | st.text(max_size=10),
    _json_value,
    max_size=5,
)
_messages = st.lists(
    st.builds(
        pb.ChatMessage,
        role=st.sampled_from(["user", "assistant", "system", "", "tool", "USER"]),
        content=st.text(max_size=40) | st.just("x" * 3000),
    ),
    max_size=10,
)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, Any]:
    rpc = draw(
        st.sampled_from(["ListServices", "Chat", "StreamChat", "RunWorkflow", "StreamWorkflow", "ResumeWorkflow"])
    )
    service = draw(st.sampled_from(SERVICES) | st.text(max_size=12))
    parameters = _struct(draw(_parameters))
    if rpc == "ListServices":
        return rpc, pb.ListServicesRequest(
            service_type=draw(st.sampled_from(["", "chat", "workflow"]) | st.text(max_size=8))
        )
    if rpc in ("Chat", "StreamChat"):
        kind = pb.ChatRequest if rpc == "Chat" else pb.StreamChatRequest
        return rpc, kind(
            service_name=service,
            messages=draw(_messages),
            parameters=parameters,
            user_id=draw(st.text(max_size=12)),
            conversation_id=draw(st.sampled_from(["", "7381473525342978089"]) | st.text(max_size=12)),
        )
    if rpc == "ResumeWorkflow":
        return rpc, pb.ResumeWorkflowRequest(
            service_name=service,
            workflow_id=draw(st.text(max_size=12)),
            event_id=draw(st.text(max_size=12)),
            resume_data=draw(st.text(max_size=12)),
            interrupt_type=draw(st.integers(min_value=-(2**31), max_value=2**31 - 1)),
        )
    workflow_kind = pb.RunWorkflowRequest if rpc == "RunWorkflow" else pb.StreamWorkflowRequest
    return rpc, workflow_kind(
        service_name=service,
        workflow_id=draw(st.text(max_size=12)),
        parameters=parameters,
        bot_id=draw(st.text(max_size=12)),
        app_id=draw(st.text(max_size=12)),
    )


def _call(stub: pb_grpc.AIPlatformServiceStub, rpc: str, request: Any) -> grpc.StatusCode:
    method: Callable[..., Any] = getattr(stub, rpc)
    try:
        if rpc in ("StreamChat", "StreamWorkflow", "ResumeWorkflow"):
            for _ in method(request, timeout=10):
                pass
        else:
            method(request, timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=_requests())
def test_random_requests_get_a_defined_status(background_gateway: _BackgroundGateway, call: tuple[str, Any]) -> None:
    rpc, request = call
    assert _call(background_gateway.stub, rpc, request) in DEFINED


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=200))
def test_undecodable_bytes_get_a_defined_status(background_gateway: _BackgroundGateway, payload: bytes) -> None:
    for rpc, streaming in (("Chat", False), ("StreamChat", True), ("RunWorkflow", False), ("ListServices", False)):
        path = f"/aiplatform.v1.AIPlatformService/{rpc}"
        channel = background_gateway.channel
        try:
            if streaming:
                for _ in channel.unary_stream(path, request_serializer=bytes, response_deserializer=bytes)(
                    payload, timeout=10
                ):
                    pass
            else:
                channel.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)(payload, timeout=10)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
        assert code in DEFINED


def test_the_server_keeps_serving_after_the_fuzzing(background_gateway: _BackgroundGateway) -> None:
    health: Any = health_pb2_grpc.HealthStub(background_gateway.channel)  # its stubs lack the methods
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    reply = background_gateway.stub.Chat(
        pb.ChatRequest(service_name="echo", messages=[pb.ChatMessage(role="user", content="still here")]), timeout=5
    )
    assert reply.content == "still here"


@pytest.mark.parametrize(
    ("request_", "field", "setting"),
    [
        (
            pb.ChatRequest(service_name="echo", messages=[pb.ChatMessage(role="user", content="m")] * 9),
            "messages",
            "AIP_MAX_MESSAGES",
        ),
        (
            pb.ChatRequest(service_name="echo", messages=[pb.ChatMessage(role="user", content="汉" * 700)]),
            "messages[0].content",
            "AIP_MAX_MESSAGE_BYTES",
        ),
        (
            pb.ChatRequest(
                service_name="echo",
                messages=[pb.ChatMessage(role="user", content="m")],
                parameters=_struct({"x": "y" * 2000}),
            ),
            "parameters",
            "AIP_MAX_PARAMETERS_BYTES",
        ),
        (
            pb.RunWorkflowRequest(service_name="echo_workflow", parameters=_struct({"x": "y" * 2000})),
            "parameters",
            "AIP_MAX_PARAMETERS_BYTES",
        ),
    ],
)
def test_limits_are_answered_naming_the_limit(
    background_gateway: _BackgroundGateway, request_: Any, field: str, setting: str
) -> None:
    rpc = "Chat" if isinstance(request_, pb.ChatRequest) else "RunWorkflow"
    with pytest.raises(grpc.RpcError) as raised:
        getattr(background_gateway.stub, rpc)(request_, timeout=5)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}: ") and setting in error.details()


def test_a_request_over_the_receive_limit_is_resource_exhausted(background_gateway: _BackgroundGateway) -> None:
    huge = pb.ChatRequest(service_name="echo", messages=[pb.ChatMessage(role="user", content="x" * (5 * 1024 * 1024))])
    with pytest.raises(grpc.RpcError) as raised:
        background_gateway.stub.Chat(huge, timeout=10)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()
