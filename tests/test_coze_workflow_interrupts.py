"""Interrupts, run ids and trace links on every coze_workflow RPC, and the run options, against a fake Coze."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.base import WorkflowInterrupt, WorkflowNodeEvent
from providers.coze.workflows import WorkflowStream
from providers.errors import UpstreamUnavailable
from providers.sse import ServerSentEvent
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import collect

INPUTS = {"city": "北京"}


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _required_parameters(interrupt: pb.WorkflowInterrupt) -> Any:
    return json_format.MessageToDict(interrupt.required_parameters)


def _debug_url_of(fake_coze: FakeCoze, workflow_id: str) -> str:
    (run,) = fake_coze.received_workflow_runs
    return f"execute_id={run.execute_id}&space_id=7361424235321600000&workflow_id={workflow_id}"


async def _resume(
    stub: pb_grpc.AIPlatformServiceStub, workflow_id: str, event_id: str, interrupt_type: int, resume_data: str
) -> tuple[list[pb.ResumeWorkflowResponse], grpc.aio.AioRpcError | None]:
    request = pb.ResumeWorkflowRequest(
        service_name="coze_workflow",
        workflow_id=workflow_id,
        event_id=event_id,
        interrupt_type=interrupt_type,
        resume_data=resume_data,
    )
    return await collect(stub.ResumeWorkflow(request))


# --- required_parameters -------------------------------------------------------------------------


async def test_run_workflow_returns_an_input_nodes_required_parameters(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    response = await stub.RunWorkflow(
        pb.RunWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_INPUT_NODE)
    )
    assert response.output == ""
    assert response.interrupt.event_id == fake.INPUT_EVENT_ID
    assert response.interrupt.type == fake.INPUT_INTERRUPT_TYPE
    assert _required_parameters(response.interrupt) == fake.INPUT_REQUIRED_PARAMETERS
    (run,) = fake_coze.received_workflow_runs
    assert response.execute_id == run.execute_id


async def test_run_workflow_question_node_has_no_required_parameters(stub: pb_grpc.AIPlatformServiceStub) -> None:
    response = await stub.RunWorkflow(
        pb.RunWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_INTERRUPT)
    )
    assert response.interrupt.event_id == fake.INTERRUPT_EVENT_ID
    assert not response.interrupt.HasField("required_parameters")


async def test_stream_workflow_interrupt_carries_required_parameters_and_debug_url(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    events, error = await collect(
        stub.StreamWorkflow(
            pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_INPUT_NODE)
        )
    )
    assert error is None
    (interrupted,) = events
    assert interrupted.node_title == fake.INPUT_NODE_TITLE
    assert interrupted.interrupt.event_id == fake.INPUT_EVENT_ID
    assert _required_parameters(interrupted.interrupt) == fake.INPUT_REQUIRED_PARAMETERS
    assert interrupted.debug_url.endswith(_debug_url_of(fake_coze, fake.WORKFLOW_INPUT_NODE))


async def test_resume_workflow_answers_an_input_node_and_ends_with_the_trace(
    stub: pb_grpc.AIPlatformServiceStub,
) -> None:
    events, error = await _resume(
        stub, fake.WORKFLOW_INPUT_NODE, fake.INPUT_EVENT_ID, fake.INPUT_INTERRUPT_TYPE, json.dumps({"city": "上海"})
    )
    assert error is None
    end, trace = events
    assert end.node_title == "End" and not end.HasField("interrupt")
    assert trace == pb.ResumeWorkflowResponse(debug_url=trace.debug_url)
    assert fake.execute_id_of(fake.INPUT_EVENT_ID) in trace.debug_url


async def test_resume_workflow_that_interrupts_again_carries_the_new_interrupt(
    stub: pb_grpc.AIPlatformServiceStub,
) -> None:
    events, error = await _resume(
        stub, fake.WORKFLOW_INTERRUPT_TWICE, fake.INTERRUPT_EVENT_ID, fake.INTERRUPT_TYPE, "北京"
    )
    assert error is None
    assert events[-1].interrupt.event_id == fake.INTERRUPT_EVENT_ID_2
    assert not events[-1].interrupt.HasField("required_parameters")


# --- execute_id and debug_url on streams ----------------------------------------------------------


async def test_stream_workflow_ends_with_dones_debug_url_after_the_end_node(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    events, error = await collect(
        stub.StreamWorkflow(pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_NODE_IDS))
    )
    assert error is None
    *nodes, trace = events
    assert [(event.node_title, event.node_id) for event in nodes] == [
        ("Message", "135279"),
        ("Message", "135279"),
        ("End", "900001"),
    ]
    assert not any(event.debug_url for event in nodes)
    assert trace == pb.StreamWorkflowResponse(debug_url=trace.debug_url)
    assert trace.debug_url.endswith(_debug_url_of(fake_coze, fake.WORKFLOW_NODE_IDS))
    # No stream event documents the run's id: none is invented.
    assert not any(event.execute_id for event in events)


async def test_done_without_debug_url_adds_no_event(stub: pb_grpc.AIPlatformServiceStub) -> None:
    events, error = await collect(
        stub.StreamWorkflow(
            pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_EMPTY_DONE)
        )
    )
    assert error is None
    assert [event.node_title for event in events] == ["Message", "Message", "End"]


async def test_error_events_debug_url_is_in_the_status(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    events, error = await collect(
        stub.StreamWorkflow(
            pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_ERROR_DEBUG_URL)
        )
    )
    assert len(events) == 1
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    details = error.details() or ""
    assert "workflow node failed (trace: https://" in details
    assert _debug_url_of(fake_coze, fake.WORKFLOW_ERROR_DEBUG_URL) in details


# --- run options -----------------------------------------------------------------------------------

_OPTIONS = {
    "bot_id": "7379462189365198898",
    "workflow_version": "v0.0.5",
    "connector_id": "1024",
    "ext": {"latitude": "39.9", "user_id": "u-1"},
}


@pytest.mark.parametrize("rpc", ["RunWorkflow", "StreamWorkflow"])
async def test_run_options_reach_coze_beside_the_inputs(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str
) -> None:
    fields: dict[str, Any] = {
        "service_name": "coze_workflow",
        "workflow_id": fake.WORKFLOW_NORMAL,
        "parameters": _struct(INPUTS),
        **_OPTIONS,
    }
    if rpc == "RunWorkflow":
        await stub.RunWorkflow(pb.RunWorkflowRequest(**fields))
    else:
        _, error = await collect(stub.StreamWorkflow(pb.StreamWorkflowRequest(**fields)))
        assert error is None
    (run,) = fake_coze.received_workflow_runs
    assert run.options == _OPTIONS
    assert run.parameters == INPUTS


async def test_unset_options_are_not_sent(stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze) -> None:
    await stub.RunWorkflow(
        pb.RunWorkflowRequest(
            service_name="coze_workflow", workflow_id=fake.WORKFLOW_NORMAL, parameters=_struct(INPUTS)
        )
    )
    (run,) = fake_coze.received_workflow_runs
    assert run.options == {}


# --- the rules, on lists of events -----------------------------------------------------------------


def _read(*events: tuple[str, object]) -> list[WorkflowNodeEvent | None]:
    run = WorkflowStream()
    return [
        run.read(ServerSentEvent(name, data if isinstance(data, str) else json.dumps(data))) for name, data in events
    ]


def test_done_data_that_is_not_an_object_adds_nothing() -> None:
    assert _read(("Done", "[DONE]"), ("Done", ""), ("Done", {})) == [None, None, None]


def test_interrupt_keeps_any_json_value_of_required_parameters() -> None:
    data = {"event_id": "e/1", "type": 5, "data": "", "required_parameters": ["img", "city"]}
    (event,) = _read(("Interrupt", {"interrupt_data": data, "node_title": "输入"}))
    assert event == WorkflowNodeEvent(
        node_title="输入", interrupt=WorkflowInterrupt("e/1", 5, "", required_parameters=["img", "city"])
    )


def test_error_without_debug_url_keeps_its_message() -> None:
    with pytest.raises(UpstreamUnavailable, match=r"^Coze workflow failed: node failed \(provider"):
        _read(("Error", {"error_code": 5000, "error_message": "node failed"}))


async def test_list_services_shows_the_workflow_request_fields_with_their_types(
    stub: pb_grpc.AIPlatformServiceStub,
) -> None:
    listed = await stub.ListServices(pb.ListServicesRequest(service_type="workflow"))
    by_name = {service.name: service for service in listed.services}
    fields = {field.name: field.type for field in by_name["coze_workflow"].request_fields}
    assert fields == {
        "workflow_id": "string",
        "bot_id": "string",
        "app_id": "string",
        "workflow_version": "string",
        "connector_id": "string",
        "ext": "object of strings",
    }
    # A service that reads none of them lists none.
    assert not by_name["echo_workflow"].request_fields
