"""The chat options a Coze bot request may set in ``parameters``: listed by ListServices, checked, sent to /v3/chat.

Each option is declared once (its name, type and description) in the service's ParameterSpec
list: ListServices shows that list and requests are checked by it, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from tests.conftest import error_details
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import answer, collect

HI = [pb.ChatMessage(role="user", content="hi")]
OPTIONS: dict[str, Any] = {
    "auto_save_history": False,
    "extra_params": {"latitude": "39.9", "longitude": "116.4"},
    "shortcut_command": {"command_id": "7374633552917479464", "parameters": {"city": "北京"}},
    "parameters": {"city": "北京", "days": 3, "detail": {"hourly": True}},
    "custom_variables": {"name": "小明"},
    "meta_data": {"trace": "t-1"},
}


def _parameters(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({"bot_id": fake.BOT_NORMAL, **values})
    return struct


@pytest.mark.parametrize("rpc", ["StreamChat", "Chat"])
async def test_each_option_reaches_coze_as_it_documents_it(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str
) -> None:
    parameters = _parameters(**OPTIONS)
    if rpc == "Chat":
        response, error = await answer(
            stub.Chat(pb.ChatRequest(service_name="coze", messages=HI, parameters=parameters))
        )
        assert error is None and response is not None and response.content == fake.DEFAULT_ANSWER
    else:
        request = pb.StreamChatRequest(service_name="coze", messages=HI, parameters=parameters)
        _, error = await collect(stub.StreamChat(request))
        assert error is None
    (chat,) = fake_coze.received_chats
    # auto_save_history=false is Coze's 4007 only with stream=false: the gateway always streams.
    assert chat.options == OPTIONS
    (sent,) = [request for request in fake_coze.requests if request.path == "/v3/chat"]
    assert sent.json["stream"] is True
    assert sent.json["parameters"]["days"] == 3


async def test_auto_save_history_is_sent_true_when_not_set(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    await stub.Chat(pb.ChatRequest(service_name="coze", messages=HI, parameters=_parameters()))
    (sent,) = [request for request in fake_coze.requests if request.path == "/v3/chat"]
    assert sent.json["auto_save_history"] is True
    for option in ("extra_params", "shortcut_command", "parameters"):
        assert option not in sent.json


async def test_list_services_shows_each_option_with_its_type(stub: pb_grpc.AIPlatformServiceStub) -> None:
    listed = await stub.ListServices(pb.ListServicesRequest())
    (coze,) = [service for service in listed.services if service.name == "coze"]
    types = {parameter.name: parameter.type for parameter in coze.parameters}
    assert types == {
        "bot_id": "string",
        "custom_variables": "object",
        "meta_data": "object",
        "auto_save_history": "boolean",
        "extra_params": "object",
        "shortcut_command": "object",
        "parameters": "object",
    }
    assert all(parameter.description for parameter in coze.parameters)


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"auto_save_history": "false"}, "parameters.auto_save_history", "must be a boolean, got a string"),
        ({"extra_params": ["a"]}, "parameters.extra_params", "must be an object of strings, got a list"),
        ({"extra_params": {"latitude": 39.9}}, "parameters.extra_params.latitude", "must be a string, got a number"),
        ({"shortcut_command": "cmd"}, "parameters.shortcut_command", "must be an object, got a string"),
        ({"shortcut_command": {}}, "parameters.shortcut_command.command_id", "is required"),
        ({"shortcut_command": {"command_id": 1}}, "parameters.shortcut_command.command_id", "got a number"),
        (
            {"shortcut_command": {"command_id": "c", "parameters": {"city": 1}}},
            "parameters.shortcut_command.parameters.city",
            "must be a string",
        ),
        ({"shortcut_command": {"command_id": "c", "args": {}}}, "parameters.shortcut_command.args", "unknown key"),
        ({"parameters": "city=北京"}, "parameters.parameters", "must be an object, got a string"),
        ({"bot_version": "1"}, "parameters.bot_version", "unknown parameter"),
    ],
)
@pytest.mark.parametrize("rpc", ["StreamChat", "Chat"])
async def test_an_option_of_the_wrong_type_is_refused_naming_it(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, rpc: str, values: dict[str, Any], field: str, words: str
) -> None:
    parameters = _parameters(**values)
    if rpc == "Chat":
        _, error = await answer(stub.Chat(pb.ChatRequest(service_name="coze", messages=HI, parameters=parameters)))
    else:
        request = pb.StreamChatRequest(service_name="coze", messages=HI, parameters=parameters)
        _, error = await collect(stub.StreamChat(request))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = error_details(error)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == field
    assert words in violation.description
    assert fake_coze.requests == []
