"""The coze_workflow service end to end against a fake Coze on 127.0.0.1."""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from server.settings import CozeSettings
from tests.conftest import error_details, make_settings
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import collect
from tests.harness import gateway_for

INPUTS = {"city": "北京", "days": 3, "ratio": 0.5, "ids": ["7379462189365198898"], "nested": {"n": 1}}


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _stream_request(workflow_id: str = fake.WORKFLOW_NORMAL, **fields: Any) -> pb.StreamWorkflowRequest:
    return pb.StreamWorkflowRequest(
        service_name="coze_workflow", workflow_id=workflow_id, parameters=_struct(INPUTS), **fields
    )


def _sent(fake_coze: FakeCoze, path: str) -> list[fake.RecordedRequest]:
    return [request for request in fake_coze.requests if request.path == path]


async def test_run_workflow_returns_output_ids_and_usage(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    response = await stub.RunWorkflow(
        pb.RunWorkflowRequest(
            service_name="coze_workflow",
            workflow_id="7389589103588704256",
            parameters=_struct(INPUTS),
            bot_id="7379462189365198898",
            app_id="app-1",
        )
    )

    assert json.loads(response.output) == {"output": INPUTS}
    assert len(response.execute_id) == 19
    assert response.debug_url.startswith("https://")
    assert response.usage.total_tokens == fake.WORKFLOW_USAGE_TOKEN_COUNT
    (sent,) = _sent(fake_coze, "/v1/workflow/run")
    # Struct made every number a double; integral ones must go upstream as integers again.
    assert sent.json["parameters"] == INPUTS
    assert type(sent.json["parameters"]["days"]) is int
    assert type(sent.json["parameters"]["nested"]["n"]) is int
    assert (sent.json["workflow_id"], sent.json["bot_id"], sent.json["app_id"]) == (
        "7389589103588704256",
        "7379462189365198898",
        "app-1",
    )


async def test_stream_workflow_relays_each_node_event(stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze) -> None:
    events, error = await collect(stub.StreamWorkflow(_stream_request()))

    assert error is None
    *nodes, trace = events
    assert [event.node_title for event in nodes] == ["Message", "Message", "End"]
    assert [event.node_seq_id for event in nodes] == ["0", "1", "0"]
    assert [event.node_is_finish for event in nodes] == [False, True, True]
    assert json.loads(nodes[-1].content) == {"output": INPUTS}
    assert nodes[-1].usage.total_tokens == fake.WORKFLOW_USAGE_TOKEN_COUNT
    # Done's debug_url comes last, on a message of its own.
    assert trace.debug_url.startswith("https://") and trace == pb.StreamWorkflowResponse(debug_url=trace.debug_url)
    (sent,) = _sent(fake_coze, "/v1/workflow/stream_run")
    assert sent.json == {"workflow_id": fake.WORKFLOW_NORMAL, "parameters": INPUTS}


async def test_ping_heartbeats_are_skipped(stub: pb_grpc.AIPlatformServiceStub) -> None:
    events, error = await collect(stub.StreamWorkflow(_stream_request(fake.WORKFLOW_PING)))
    assert error is None
    assert [event.node_title for event in events] == ["Message", "Message", "End", ""]


async def test_interrupt_arrives_with_event_id_and_type(stub: pb_grpc.AIPlatformServiceStub) -> None:
    events, error = await collect(stub.StreamWorkflow(_stream_request(fake.WORKFLOW_INTERRUPT)))

    assert error is None
    question, interrupt = events
    assert (question.node_title, question.content) == (fake.INTERRUPT_NODE_TITLE, fake.INTERRUPT_QUESTION)
    assert interrupt.HasField("interrupt") and not question.HasField("interrupt")
    assert interrupt.interrupt.event_id == fake.INTERRUPT_EVENT_ID
    assert interrupt.interrupt.type == fake.INTERRUPT_TYPE
    assert interrupt.node_title == fake.INTERRUPT_NODE_TITLE


async def test_default_workflow_id_comes_from_settings(fake_coze: FakeCoze) -> None:
    settings = make_settings(fake_coze)
    settings.coze = CozeSettings(
        _env_file=None, api_token=fake_coze.token, api_base=fake_coze.base_url, default_workflow_id="wf-default"
    )
    async with gateway_for(settings) as gateway:
        await gateway.stub.RunWorkflow(pb.RunWorkflowRequest(service_name="coze_workflow"))
        await collect(gateway.stub.StreamWorkflow(pb.StreamWorkflowRequest(service_name="coze_workflow")))
    assert [request.json["workflow_id"] for request in fake_coze.requests] == ["wf-default", "wf-default"]


@pytest.mark.parametrize(
    ("workflow_id", "code", "fragment", "delivered"),
    [
        (fake.WORKFLOW_ERROR_EVENT, grpc.StatusCode.UNAVAILABLE, "workflow node failed (provider=coze, code=5000", 1),
        (fake.WORKFLOW_CUT, grpc.StatusCode.UNAVAILABLE, "broke the connection", 1),
        (fake.WORKFLOW_NO_DONE, grpc.StatusCode.UNAVAILABLE, "ended before its Done event", 3),
        (fake.WORKFLOW_MISSING, grpc.StatusCode.NOT_FOUND, "resource not found", 0),
    ],
)
async def test_a_workflow_that_did_not_finish_never_ends_ok(
    stub: pb_grpc.AIPlatformServiceStub,
    fake_coze: FakeCoze,
    workflow_id: str,
    code: grpc.StatusCode,
    fragment: str,
    delivered: int,
) -> None:
    events, error = await collect(stub.StreamWorkflow(_stream_request(workflow_id)))

    assert len(events) == delivered
    assert error is not None and error.code() == code
    assert fragment in (error.details() or "")
    assert f"logid={fake_coze.requests[-1].log_id}" in (error.details() or "")
    assert error_details(error)["ErrorInfo"].metadata["provider"] == "coze"  # type: ignore[attr-defined]


async def test_run_workflow_missing_is_not_found(stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RunWorkflow(pb.RunWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_MISSING))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"logid={fake_coze.requests[-1].log_id}" in (raised.value.details() or "")


async def test_cancelled_workflow_stream_closes_the_upstream_connection(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    call = stub.StreamWorkflow(_stream_request(fake.WORKFLOW_STALL))
    first = await call.read()
    assert first.node_title == "Message"

    cancelled_at = time.monotonic()
    call.cancel()
    disconnect = await fake_coze.wait_for_disconnect(timeout=2.0)
    assert disconnect.scenario == fake.WORKFLOW_STALL
    assert disconnect.time - cancelled_at < 1.0


async def test_a_rate_limited_workflow_stream_carries_retry_info(stub: pb_grpc.AIPlatformServiceStub) -> None:
    events, error = await collect(stub.StreamWorkflow(_stream_request(fake.WORKFLOW_RATE_LIMITED)))
    assert events == []
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_details(error)["RetryInfo"].retry_delay.seconds == fake.RETRY_AFTER_SECONDS  # type: ignore[attr-defined]
