"""Hostile callers and hostile upstreams cannot make the gateway's answers or logs huge, or leak its secrets.

A caller's value is quoted by its first 64 characters and its length; whatever an upstream says
(its error text, an echo of the request's headers, a 1 MiB error page) reaches callers and the
log scrubbed of every credential the gateway holds and cut to a bounded length.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.limits import ServiceLimits
from server.errors import MAX_MESSAGE_CHARS
from tests.conftest import error_details
from tests.fakes import coze as fake
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import PROVIDERS, Fault, answer, collect, open_upstream, serving
from tests.gateway_process import gateway_env, running_gateway

HUGE = 3 * 1024 * 1024  # characters: under the 4 MiB request limit, and far over any sane message
HUGE_KEY = 60_000  # a parameter key: parameters as a whole may take 64 KiB (AIP_MAX_PARAMETERS_BYTES)
#: What one refused call may add to the log, whatever it sent.
LOG_BYTES_PER_CALL = 1024

ONE_ATTEMPT = ServiceLimits(max_attempts=1)
Call = Callable[[pb_grpc.AIPlatformServiceStub], Awaitable[Any]]


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _stream(call: Any) -> Awaitable[Any]:
    async def read_all() -> list[Any]:
        return [message async for message in call]

    return read_all()


HI = [pb.ChatMessage(role="user", content="hi")]
LONG_NAME = "n" * HUGE
LONG_ROLE = [pb.ChatMessage(role="r" * HUGE, content="hi")]
LONG_KEY = _struct({"k" * HUGE_KEY: 1})
NESTED_LONG_KEY = _struct({"order": {"k" * HUGE_KEY: 2**60}})

CASES: list[tuple[str, Call, grpc.StatusCode, int]] = [
    (
        "Chat name",
        lambda s: s.Chat(pb.ChatRequest(service_name=LONG_NAME, messages=HI)),
        grpc.StatusCode.NOT_FOUND,
        HUGE,
    ),
    (
        "StreamChat name",
        lambda s: _stream(s.StreamChat(pb.StreamChatRequest(service_name=LONG_NAME, messages=HI))),
        grpc.StatusCode.NOT_FOUND,
        HUGE,
    ),
    (
        "Chat role",
        lambda s: s.Chat(pb.ChatRequest(service_name="echo", messages=LONG_ROLE)),
        grpc.StatusCode.INVALID_ARGUMENT,
        HUGE,
    ),
    (
        "StreamChat role",
        lambda s: _stream(s.StreamChat(pb.StreamChatRequest(service_name="echo", messages=LONG_ROLE))),
        grpc.StatusCode.INVALID_ARGUMENT,
        HUGE,
    ),
    (
        "Chat parameter key",
        lambda s: s.Chat(pb.ChatRequest(service_name="echo", messages=HI, parameters=LONG_KEY)),
        grpc.StatusCode.INVALID_ARGUMENT,
        HUGE_KEY,
    ),
    (
        "StreamChat parameter key",
        lambda s: _stream(s.StreamChat(pb.StreamChatRequest(service_name="echo", messages=HI, parameters=LONG_KEY))),
        grpc.StatusCode.INVALID_ARGUMENT,
        HUGE_KEY,
    ),
    (
        "RunWorkflow name",
        lambda s: s.RunWorkflow(pb.RunWorkflowRequest(service_name=LONG_NAME)),
        grpc.StatusCode.NOT_FOUND,
        HUGE,
    ),
    (
        "StreamWorkflow nested key",
        lambda s: _stream(
            s.StreamWorkflow(pb.StreamWorkflowRequest(service_name="echo_workflow", parameters=NESTED_LONG_KEY))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        HUGE_KEY,
    ),
    (
        "RunWorkflow nested key",
        lambda s: s.RunWorkflow(pb.RunWorkflowRequest(service_name="echo_workflow", parameters=NESTED_LONG_KEY)),
        grpc.StatusCode.INVALID_ARGUMENT,
        HUGE_KEY,
    ),
    (
        "ResumeWorkflow name",
        lambda s: _stream(
            s.ResumeWorkflow(pb.ResumeWorkflowRequest(service_name=LONG_NAME, event_id="e", resume_data="r"))
        ),
        grpc.StatusCode.NOT_FOUND,
        HUGE,
    ),
]


@pytest.mark.parametrize(("call", "code", "length"), [pytest.param(*case[1:], id=case[0]) for case in CASES])
async def test_a_huge_caller_value_is_quoted_short_with_its_length(
    stub: pb_grpc.AIPlatformServiceStub,
    caplog: pytest.LogCaptureFixture,
    call: Call,
    code: grpc.StatusCode,
    length: int,
) -> None:
    with caplog.at_level(logging.INFO), pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(stub)
    error = raised.value
    assert error.code() == code, error.details()
    details = error.details() or ""
    assert len(details) < 1024
    assert f"{length} characters" in details, "the message says how long the value was"
    for violation in getattr(error_details(error).get("BadRequest"), "field_violations", ()):
        assert len(violation.field) <= 128 and len(violation.description) < 1024
    assert sum(len(record.getMessage()) for record in caplog.records) < LOG_BYTES_PER_CALL


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("rpc", ["StreamChat", "Chat"])
async def test_an_upstream_echoing_the_gateways_credential_never_passes_it_on(
    provider: str, rpc: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        open_upstream(provider) as upstream,
        serving((upstream.service(), ONE_ATTEMPT)) as gateway,
    ):
        secret = upstream.service().secrets()[0]
        with caplog.at_level(logging.DEBUG):
            if rpc == "StreamChat":
                _, error = await collect(gateway.stub.StreamChat(upstream.stream_request(Fault.ECHO_AUTH)))
            else:
                _, error = await answer(gateway.stub.Chat(upstream.chat_request(Fault.ECHO_AUTH)))
        assert error is not None
        everything_the_caller_got = (error.details() or "") + repr(error.trailing_metadata())
        assert "received headers" in everything_the_caller_got, "the upstream's text still comes through"
        assert secret not in everything_the_caller_got
        assert "[redacted]" in (error.details() or "")
        assert secret not in caplog.text


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_megabyte_upstream_error_becomes_a_bounded_message_that_keeps_its_facts(provider: str) -> None:
    async with (
        open_upstream(provider) as upstream,
        serving((upstream.service(), ONE_ATTEMPT)) as gateway,
    ):
        _, error = await collect(gateway.stub.StreamChat(upstream.stream_request(Fault.HUGE_ERROR)))
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    details = error.details() or ""
    assert len(details) <= MAX_MESSAGE_CHARS
    assert "upstream stack trace line" in details and "characters cut" in details
    log_id = error_details(error)["ErrorInfo"].metadata["log_id"]  # type: ignore[attr-defined]
    assert log_id and f"logid={log_id}" in details, "the cut keeps the upstream's facts at the end"


async def test_the_gateway_process_log_holds_no_upstream_echo_of_its_token_and_no_huge_line(
    fake_coze: FakeCoze, tmp_path: Path
) -> None:
    # As a user runs it: the gateway's logging, cozepy's logger routed through it.
    env = gateway_env(COZE_API_TOKEN=fake_coze.token, COZE_API_BASE=fake_coze.base_url, AIP_LOG_LEVEL="DEBUG")
    async with running_gateway(env, tmp_path) as gateway:
        assert gateway.process.stdout is not None
        # Read the log as it is written: a gateway writing a huge line into a full pipe would block.
        log_read = asyncio.create_task(gateway.process.stdout.read())
        stub = gateway.stub
        for bot_id in (fake.BOT_ECHO_AUTH, fake.BOT_HUGE_ERROR):
            request = pb.StreamChatRequest(
                service_name="coze", user_id="u", messages=HI, parameters=_struct({"bot_id": bot_id})
            )
            _, error = await collect(stub.StreamChat(request))
            assert error is not None
        await gateway.close_channel()
        gateway.process.terminate()
        log = (await asyncio.wait_for(log_read, 30)).decode()
    assert "received headers" in log, "the failure is logged"
    assert fake_coze.token not in log
    assert max(len(line) for line in log.splitlines()) < 1024
