"""Streams that tell the truth: no received byte lost before a cut, interrupts end OK, work never repeated.

Each test goes through a real gateway to a fake upstream that is a real HTTP server. The byte-loss
tests make the upstream send a burst of ~500 KB at once and then hang up without finishing the body
(what a crash, a deploy or a proxy's idle-kill looks like), while the caller reads late, slowly, or
with the event loop busy: that is when the gateway still holds unread bytes as the error arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from providers.coze import CozeChatService, CozeClients, CozeWorkflowService
from providers.guard import Backoff
from providers.limits import DEFAULT_LIMITS, ServiceLimits
from tests.conftest import error_details
from tests.fakes import coze as fake
from tests.fakes._server import burst_pieces, http_server
from tests.fakes.coze import FakeCoze
from tests.fakes.upstreams import PROVIDERS, Fault, answer, collect, open_upstream, serving
from tests.gateway_process import gateway_env, running_gateway

BURST = burst_pieces()
#: Backoffs short enough for tests; the limits (3 attempts) stay as in production.
QUICK_BACKOFF = Backoff(initial_seconds=0.01, max_seconds=0.02)
CANCEL_PATH = "/v3/chat/cancel"
HI = [pb.ChatMessage(role="user", content="hi")]


# --- how the caller reads ---------------------------------------------------------------------


async def _late(call: Any, hung_up: Callable[[], Any]) -> tuple[list[Any], grpc.aio.AioRpcError | None]:
    """Read nothing until the upstream has hung up, and a little longer, then everything."""
    await hung_up()
    await asyncio.sleep(0.2)
    return await collect(call)


async def _slow(call: Any, hung_up: Callable[[], Any]) -> tuple[list[Any], grpc.aio.AioRpcError | None]:
    """Read at once, but pause every 100 messages, so gRPC flow control holds the gateway's writes."""
    received: list[Any] = []

    async def paced() -> AsyncIterator[Any]:
        async for message in call:
            received.append(message)
            if len(received) % 100 == 0:
                await asyncio.sleep(0.03)
            yield message

    _, error = await collect(paced())
    return received, error


async def _busy_loop(call: Any, hung_up: Callable[[], Any]) -> tuple[list[Any], grpc.aio.AioRpcError | None]:
    """After the hang-up, block the event loop the gateway runs on, then read: data and FIN arrive together."""
    await hung_up()
    time.sleep(0.3)  # noqa: ASYNC251 - blocking the loop is the point
    return await collect(call)


READERS = [
    pytest.param(_late, id="late-reader"),
    pytest.param(_slow, id="slow-reader"),
    pytest.param(_busy_loop, id="busy-loop"),
]


def _texts(responses: list[Any], field: str) -> list[str]:
    return [getattr(response, field) for response in responses if getattr(response, field)]


def _assert_whole_burst_then_unavailable(texts: list[str], error: grpc.aio.AioRpcError | None) -> None:
    assert len(texts) == len(BURST), f"{len(BURST) - len(texts)} of {len(BURST)} pieces were lost"
    assert texts == BURST, "every piece, in order"
    assert error is not None, "a cut stream must not end OK"
    assert error.code() == grpc.StatusCode.UNAVAILABLE


# --- no received byte is lost -----------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("read", READERS)
async def test_every_chat_piece_sent_before_a_cut_reaches_the_caller_before_unavailable(
    provider: str, read: Callable[..., Any]
) -> None:
    async with (
        open_upstream(provider) as upstream,
        serving((upstream.service(), DEFAULT_LIMITS, QUICK_BACKOFF)) as gateway,
    ):
        call = gateway.stub.StreamChat(upstream.stream_request(Fault.BURST_CUT))
        responses, error = await read(call, upstream.server.wait_for_hang_up)
        _assert_whole_burst_then_unavailable(_texts(responses, "delta"), error)
        assert len(upstream.chat_requests()) == 1, "the upstream had started: no retry"


@pytest.mark.parametrize("read", READERS)
async def test_every_workflow_event_sent_before_a_cut_reaches_the_caller_before_unavailable(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze, read: Callable[..., Any]
) -> None:
    call = stub.StreamWorkflow(
        pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_BURST_CUT)
    )
    responses, error = await read(call, fake_coze.wait_for_hang_up)
    _assert_whole_burst_then_unavailable(_texts(responses, "content"), error)
    assert len(await fake_coze.wait_for_requests("/v1/workflow/stream_run")) == 1, "a workflow is never re-run"


async def test_a_gzip_encoded_stream_loses_nothing_before_a_cut_either(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    call = stub.StreamChat(_coze_stream_request(fake.BOT_BURST_CUT_GZIP))
    responses, error = await _late(call, fake_coze.wait_for_hang_up)
    _assert_whole_burst_then_unavailable(_texts(responses, "delta"), error)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_unary_chat_whose_answer_is_cut_fails_instead_of_returning_part_of_it(provider: str) -> None:
    async with (
        open_upstream(provider) as upstream,
        serving((upstream.service(), DEFAULT_LIMITS, QUICK_BACKOFF)) as gateway,
    ):
        response, error = await answer(gateway.stub.Chat(upstream.chat_request(Fault.BURST_CUT)))
        assert response is None, "part of an answer must not be presented as whole"
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
        assert len(upstream.chat_requests()) == 1


async def test_a_run_workflow_whose_answer_is_cut_fails_and_is_not_run_again(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    response, error = await answer(
        stub.RunWorkflow(pb.RunWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_BURST_CUT))
    )
    assert response is None
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert len(await fake_coze.wait_for_requests("/v1/workflow/run")) == 1


# --- interrupts are terminal ------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["interrupt-then-done", "interrupt-then-eof"])
def interrupt_shape(request: pytest.FixtureRequest, fake_coze: FakeCoze) -> bool:
    """Both shapes Coze ends an interrupted run's stream with: a Done after the Interrupt, or none."""
    fake_coze.done_after_interrupt = request.param
    return bool(request.param)


async def test_a_workflow_that_interrupts_ends_ok_with_the_interrupt_last(
    stub: pb_grpc.AIPlatformServiceStub, interrupt_shape: bool
) -> None:
    events, error = await collect(
        stub.StreamWorkflow(pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_INTERRUPT))
    )
    assert error is None, f"an interrupted run is not a failure: {error}"
    assert [event.content for event in events[:-1]] == [fake.INTERRUPT_QUESTION]
    last = events[-1]
    assert last.HasField("interrupt")
    assert (last.interrupt.event_id, last.interrupt.type) == (fake.INTERRUPT_EVENT_ID, fake.INTERRUPT_TYPE)
    assert last.node_title == fake.INTERRUPT_NODE_TITLE


async def test_a_resumed_workflow_that_interrupts_again_ends_ok_and_can_be_resumed_again(
    stub: pb_grpc.AIPlatformServiceStub, interrupt_shape: bool
) -> None:
    def resume(event_id: str, answer_text: str) -> Any:
        return stub.ResumeWorkflow(
            pb.ResumeWorkflowRequest(
                service_name="coze_workflow",
                workflow_id=fake.WORKFLOW_INTERRUPT_TWICE,
                event_id=event_id,
                interrupt_type=fake.INTERRUPT_TYPE,
                resume_data=answer_text,
            )
        )

    events, error = await collect(resume(fake.INTERRUPT_EVENT_ID, "北京"))
    assert error is None
    assert events[-1].interrupt.event_id == fake.INTERRUPT_EVENT_ID_2
    events, error = await collect(resume(events[-1].interrupt.event_id, "明天"))
    assert error is None
    assert not events[-1].HasField("interrupt")
    # The End node's event, then Done's debug_url on a message of its own.
    assert "明天" in events[-2].content and events[-1].debug_url


async def test_run_workflow_returns_the_interrupt_it_stopped_at(stub: pb_grpc.AIPlatformServiceStub) -> None:
    response = await stub.RunWorkflow(
        pb.RunWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_INTERRUPT)
    )
    assert response.output == ""
    assert response.HasField("interrupt")
    assert (response.interrupt.event_id, response.interrupt.type) == (fake.INTERRUPT_EVENT_ID, fake.INTERRUPT_TYPE)
    assert response.interrupt.data == fake.INTERRUPT_QUESTION
    assert response.execute_id and response.debug_url
    finished = await stub.RunWorkflow(pb.RunWorkflowRequest(service_name="coze_workflow", workflow_id="wf-normal"))
    assert not finished.HasField("interrupt") and finished.output


async def test_a_workflow_stream_without_done_or_interrupt_stays_unavailable(
    stub: pb_grpc.AIPlatformServiceStub,
) -> None:
    events, error = await collect(
        stub.StreamWorkflow(pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_NO_DONE))
    )
    assert events, "the events that arrived are relayed"
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert "before its Done event" in (error.details() or "")


# --- no work repeated, no chat left running ---------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("rpc", ["StreamChat", "Chat"])
async def test_a_cut_after_the_upstream_started_is_reported_not_retried(provider: str, rpc: str) -> None:
    async with (
        open_upstream(provider) as upstream,
        serving((upstream.service(), DEFAULT_LIMITS, QUICK_BACKOFF)) as gateway,
    ):
        if rpc == "StreamChat":
            responses, error = await collect(gateway.stub.StreamChat(upstream.stream_request(Fault.CUT_AT_START)))
            assert not _texts(responses, "delta")
        else:
            _, error = await answer(gateway.stub.Chat(upstream.chat_request(Fault.CUT_AT_START)))
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
        await asyncio.sleep(0.1)  # a retry, had there been one, would have been sent by now
        assert len(upstream.chat_requests()) == 1, "the upstream had started the work: sending it again repeats it"
        if provider == "coze":
            (created,) = upstream.fake.created_chats  # type: ignore[union-attr]
            (cancel,) = await upstream.server.wait_for_requests(CANCEL_PATH)
            assert cancel.json == {"conversation_id": created.conversation_id, "chat_id": created.chat_id}


async def test_a_workflow_stream_cut_before_its_first_event_is_not_run_again(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    _, error = await collect(
        stub.StreamWorkflow(
            pb.StreamWorkflowRequest(service_name="coze_workflow", workflow_id=fake.WORKFLOW_CUT_AT_START)
        )
    )
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.sleep(0.1)
    assert len([r for r in fake_coze.requests if r.path == "/v1/workflow/stream_run"]) == 1


async def test_run_workflow_is_retried_only_when_refused_for_its_rate() -> None:
    # The unary run answers after the workflow ran: a 502 then may follow side effects; a 429 may not.
    answers = {"/v1/workflow/run": [0]}

    async def run(request: web.Request) -> web.Response:
        answers["/v1/workflow/run"][0] += 1
        workflow_id = (await request.json())["workflow_id"]
        if workflow_id == "bad-gateway":
            return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")
        if answers["/v1/workflow/run"][0] == 1:
            return web.json_response({"code": 4009, "msg": "busy"}, status=429, headers={"Retry-After": "0"})
        return web.json_response({"code": 0, "msg": "", "data": "{}", "debug_url": "", "execute_id": "1"})

    async with http_server({"/v1/workflow/run": run}) as base:
        service = CozeWorkflowService("wf", CozeClients(token="pat", base_url=base))
        async with serving((service, DEFAULT_LIMITS, QUICK_BACKOFF)) as gateway:
            response = await gateway.stub.RunWorkflow(pb.RunWorkflowRequest(service_name="wf", workflow_id="limited"))
            assert response.execute_id == "1" and answers["/v1/workflow/run"][0] == 2
            answers["/v1/workflow/run"][0] = 5
            _, error = await answer(
                gateway.stub.RunWorkflow(pb.RunWorkflowRequest(service_name="wf", workflow_id="bad-gateway"))
            )
            assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
            assert answers["/v1/workflow/run"][0] == 6, "a 502 after a run is reported, not retried"


@pytest.mark.parametrize(
    ("bot_id", "limits"),
    [
        pytest.param(fake.BOT_CUT, DEFAULT_LIMITS, id="cut"),
        pytest.param(fake.BOT_ERROR_EVENT, DEFAULT_LIMITS, id="error-event"),
        pytest.param(fake.BOT_MALFORMED, DEFAULT_LIMITS, id="malformed-event"),
        pytest.param(fake.BOT_STALL, ServiceLimits(max_attempts=1, idle_timeout_seconds=0.2), id="idle-timeout"),
    ],
)
async def test_every_created_chat_that_does_not_complete_is_cancelled_at_coze(
    fake_coze: FakeCoze, bot_id: str, limits: ServiceLimits
) -> None:
    chat = CozeChatService("coze", CozeClients(token=fake_coze.token, base_url=fake_coze.base_url))
    async with serving((chat, limits, QUICK_BACKOFF)) as gateway:
        _, error = await collect(gateway.stub.StreamChat(_coze_stream_request(bot_id)))
        assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
        (created,) = fake_coze.created_chats
        (cancel,) = await fake_coze.wait_for_requests(CANCEL_PATH)
        assert cancel.json == {"conversation_id": created.conversation_id, "chat_id": created.chat_id}


async def test_a_busy_conversation_is_aborted_with_retry_info_and_the_gateway_never_causes_it(
    stub: pb_grpc.AIPlatformServiceStub, fake_coze: FakeCoze
) -> None:
    first = stub.StreamChat(_coze_stream_request(fake.BOT_STALL, conversation_id="7400000000000000001"))
    await first.read()
    # Coze runs one chat per conversation: a second turn meanwhile is refused with 4016.
    _, busy = await collect(
        stub.StreamChat(_coze_stream_request(fake.BOT_NORMAL, conversation_id="7400000000000000001"))
    )
    assert busy is not None and busy.code() == grpc.StatusCode.ABORTED
    details = error_details(busy)
    assert details["ErrorInfo"].reason == "UPSTREAM_CONVERSATION_BUSY"  # type: ignore[attr-defined]
    assert details["ErrorInfo"].metadata["upstream_code"] == "4016"  # type: ignore[attr-defined]
    assert details["RetryInfo"].retry_delay.seconds == 1  # type: ignore[attr-defined]
    # The caller gives up on the first turn and asks the next one at once: the gateway's own cancel
    # of the abandoned chat must land before, or the caller would meet its own abandoned turn.
    first.cancel()
    responses, error = await collect(
        stub.StreamChat(_coze_stream_request(fake.BOT_NORMAL, conversation_id="7400000000000000001"))
    )
    assert error is None, f"the gateway caused 4016 itself: {error}"
    assert "".join(_texts(responses, "delta")) == fake.DEFAULT_ANSWER


async def test_a_chat_failed_event_in_the_documented_code_msg_shape_keeps_its_code(
    stub: pb_grpc.AIPlatformServiceStub,
) -> None:
    responses, error = await collect(stub.StreamChat(_coze_stream_request(fake.BOT_FAILED_DOC_SHAPE)))
    assert _texts(responses, "delta") == fake.split_answer(fake.DEFAULT_ANSWER)[:2]
    assert error is not None
    assert "code=701231" in (error.details() or "") and "schema" not in (error.details() or "")
    assert error_details(error)["ErrorInfo"].metadata["upstream_code"] == "701231"  # type: ignore[attr-defined]


# --- overload default -------------------------------------------------------------------------


async def test_a_default_gateway_holds_1024_streams_to_one_service_and_logs_its_first_refusal(tmp_path: Path) -> None:
    # The gateway as a user starts it (`python -m server`, every setting at its default), in its own process.
    parameters = struct_pb2.Struct()
    parameters.update({"delay_ms": 500})
    words = " ".join(["word"] * 40)  # 20 s per stream: all of them stay open through the test
    request = pb.StreamChatRequest(
        service_name="echo", messages=[pb.ChatMessage(role="user", content=words)], parameters=parameters
    )
    async with running_gateway(gateway_env(), tmp_path) as gateway:
        assert gateway.process.stdout is not None
        # Read the log as it is written, so a full pipe can never block the gateway.
        log_read = asyncio.create_task(gateway.process.stdout.read())
        stub = gateway.stub
        calls = [stub.StreamChat(request) for _ in range(1024)]
        try:
            # A first word on every stream: each one was admitted and is running.
            firsts = await asyncio.gather(*(call.read() for call in calls))
            assert all(first.delta == "word" for first in firsts)
            for _ in range(2):
                _, refused = await collect(stub.StreamChat(request))
                assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "limit of 1024 concurrent calls" in (refused.details() or "")
        finally:
            for call in calls:
                call.cancel()
        await gateway.close_channel()
        gateway.process.terminate()
        log = (await asyncio.wait_for(log_read, 30)).decode()
    warnings = [line for line in log.splitlines() if "reached its limit" in line]
    assert len(warnings) == 1, log[-2000:]
    assert "WARNING" in warnings[0] and "'echo'" in warnings[0] and "1024" in warnings[0]


def _coze_stream_request(bot_id: str, conversation_id: str = "") -> pb.StreamChatRequest:
    parameters = struct_pb2.Struct()
    parameters.update({"bot_id": bot_id})
    return pb.StreamChatRequest(
        service_name="coze", user_id="u-1", messages=HI, parameters=parameters, conversation_id=conversation_id
    )
