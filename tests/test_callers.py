"""Caller keys, access and per-key limits, seen from a caller: real gateway, real fake upstream.

With keys configured, a call without a valid key is refused UNAUTHENTICATED before the upstream
sees anything; a key sees and calls only its services; each limit refuses the call past it with
RESOURCE_EXHAUSTED, its ErrorInfo reason, QuotaFailure and (when a retry can succeed) RetryInfo;
token reservations settle to what calls really used, also for cancelled and failed ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from providers.echo import EchoChatService, EchoWorkflowService
from providers.limits import ServiceLimits
from server.callers import KeyEntry, keygen_text
from server.usage import estimate_tokens
from tests.conftest import error_details
from tests.fakes import openai
from tests.fakes.upstreams import Upstream, collect, open_upstream
from tests.harness import gateway_for, make_settings
from tests.redis_server import RedisServer

ALPHA_KEY = "aip_alpha-key-for-the-tests-0123456789abcdef"
BETA_KEY = "aip_beta-key-for-the-tests-0123456789abcdef"
#: Output tokens a call reserves when it sets no max_tokens.
RESERVED_OUTPUT = 50


def entry(key: str, services: list[str], **limits: int) -> KeyEntry:
    return KeyEntry(sha256=hashlib.sha256(key.encode()).hexdigest(), services=services, **limits)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The google.rpc details of a failed call, by type name."""
    return error_details(error)


def chat(service: str = "openai", *, max_tokens: int | None = None, text: str = "hi") -> pb.ChatRequest:
    parameters = struct_pb2.Struct()
    if max_tokens is not None:
        parameters.update({"max_tokens": max_tokens})
    return pb.ChatRequest(
        service_name=service, messages=[pb.ChatMessage(role="user", content=text)], parameters=parameters
    )


def stream(service: str = "openai", model: str = openai.MODEL_NORMAL) -> pb.StreamChatRequest:
    parameters = struct_pb2.Struct()
    parameters.update({"model": model})
    return pb.StreamChatRequest(
        service_name=service, messages=[pb.ChatMessage(role="user", content="hi")], parameters=parameters
    )


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with open_upstream("openai") as started:
        yield started


def keyed_gateway(upstream: Upstream, **keys: KeyEntry) -> Any:
    """A gateway with ``keys``, serving the fake OpenAI upstream and three echo services."""
    limits = ServiceLimits(reserved_output_tokens=RESERVED_OUTPUT)
    return gateway_for(
        make_settings(None, caller_keys=keys),
        services=[
            (upstream.service(), limits),
            (EchoChatService("echo"), limits),
            (EchoChatService("internal-echo"), limits),
            (EchoWorkflowService("echo_workflow"), limits),
        ],
    )


# --- keys ------------------------------------------------------------------------------------------


async def test_every_rpc_without_a_valid_key_is_unauthenticated_and_the_upstream_sees_nothing(
    upstream: Upstream,
) -> None:
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"])) as gateway:
        stub = gateway.stub
        calls: list[Any] = [
            lambda metadata: stub.ListServices(pb.ListServicesRequest(), metadata=metadata),
            lambda metadata: stub.Chat(chat(), metadata=metadata),
            lambda metadata: collect(stub.StreamChat(stream(), metadata=metadata)),
            lambda metadata: stub.RunWorkflow(pb.RunWorkflowRequest(service_name="echo_workflow"), metadata=metadata),
            lambda metadata: collect(
                stub.StreamWorkflow(pb.StreamWorkflowRequest(service_name="echo_workflow"), metadata=metadata)
            ),
            lambda metadata: collect(
                stub.ResumeWorkflow(
                    pb.ResumeWorkflowRequest(service_name="echo_workflow", event_id="e", resume_data="x"),
                    metadata=metadata,
                )
            ),
        ]
        wrong_keys: list[tuple[tuple[str, str], ...]] = [
            (),
            bearer("aip_not-a-configured-key"),
            (("x-api-key", BETA_KEY),),
            (("authorization", f"Basic {ALPHA_KEY}"),),  # a key, but not as a bearer token
            (("authorization", "Bearer "),),
        ]
        for call in calls:
            for metadata in wrong_keys:
                try:
                    outcome = await call(metadata)
                except grpc.aio.AioRpcError as raised:
                    error = raised
                else:
                    assert isinstance(outcome, tuple) and outcome[1] is not None, metadata
                    assert outcome[0] == []
                    error = outcome[1]
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (metadata, error)
                assert details(error)["ErrorInfo"].reason == "UNAUTHENTICATED"
                assert ALPHA_KEY not in (error.details() or "")
        assert upstream.chat_requests() == []


async def test_a_valid_key_is_taken_as_bearer_token_or_x_api_key(upstream: Upstream) -> None:
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"])) as gateway:
        by_bearer = await gateway.stub.Chat(chat(), metadata=bearer(ALPHA_KEY))
        by_header = await gateway.stub.Chat(chat(), metadata=(("x-api-key", ALPHA_KEY),))
        lower_case = await gateway.stub.Chat(chat(), metadata=(("authorization", f"bearer {ALPHA_KEY}"),))
    assert by_bearer.content == by_header.content == lower_case.content == upstream.fake.answer
    assert len(upstream.chat_requests()) == 3
    # The gateway's own upstream key goes upstream, never the caller's.
    assert all(ALPHA_KEY not in str(request.headers) for request in upstream.chat_requests())


async def test_health_stays_open_without_a_key(upstream: Upstream) -> None:
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"])) as gateway:
        answer = await gateway.health.Check(health_pb2.HealthCheckRequest(service="aiplatform.v1.AIPlatformService"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


# --- access ----------------------------------------------------------------------------------------


async def test_a_key_sees_and_calls_only_its_services(upstream: Upstream) -> None:
    keys = {"alpha": entry(ALPHA_KEY, ["echo", "open*"]), "beta": entry(BETA_KEY, ["*echo*"])}
    async with keyed_gateway(upstream, **keys) as gateway:
        alpha = await gateway.stub.ListServices(pb.ListServicesRequest(), metadata=bearer(ALPHA_KEY))
        beta = await gateway.stub.ListServices(pb.ListServicesRequest(), metadata=bearer(BETA_KEY))
        assert [service.name for service in alpha.services] == ["echo", "openai"]
        assert [service.name for service in beta.services] == ["echo", "echo_workflow", "internal-echo"]

        assert (await gateway.stub.Chat(chat("echo"), metadata=bearer(ALPHA_KEY))).content
        refusals = {}
        for name in ("internal-echo", "no-such-service"):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await gateway.stub.Chat(chat(name), metadata=bearer(ALPHA_KEY))
            refusals[name] = raised.value
        _, beta_stream_error = await collect(gateway.stub.StreamChat(stream("openai"), metadata=bearer(BETA_KEY)))
    for name, error in refusals.items():
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert details(error)["ErrorInfo"].reason == "PERMISSION_DENIED"
        assert name in (error.details() or "") and "alpha" in (error.details() or "")
    # The same words whether the service exists or not: a key cannot probe for services.
    exists, absent = (refusals[name].details() or "" for name in ("internal-echo", "no-such-service"))
    assert exists.replace("internal-echo", "X") == absent.replace("no-such-service", "X")
    assert beta_stream_error is not None and beta_stream_error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert upstream.chat_requests() == []


# --- limits ----------------------------------------------------------------------------------------


def assert_refused(error: grpc.aio.AioRpcError | None, reason: str, limit: str, *, retry: bool) -> None:
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    found = details(error)
    assert found["ErrorInfo"].reason == reason
    violation = found["QuotaFailure"].violations[0]
    assert (violation.subject, violation.description) == ("key:alpha", limit)
    assert ("RetryInfo" in found) is retry
    if retry:
        assert found["RetryInfo"].retry_delay.ToNanoseconds() > 0


async def refusal(call: Any) -> grpc.aio.AioRpcError | None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def test_requests_per_minute_refuses_the_call_past_it(upstream: Upstream) -> None:
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"], requests_per_minute=3)) as gateway:
        for _ in range(3):
            await gateway.stub.Chat(chat("echo"), metadata=bearer(ALPHA_KEY))
        error = await refusal(gateway.stub.Chat(chat("echo"), metadata=bearer(ALPHA_KEY)))
        # Listing services is no call to a service: not counted, not refused.
        await gateway.stub.ListServices(pb.ListServicesRequest(), metadata=bearer(ALPHA_KEY))
    assert_refused(error, "RATE_LIMITED", "requests_per_minute", retry=True)


async def test_max_concurrent_calls_refuses_a_call_while_the_key_has_its_calls_in_flight(upstream: Upstream) -> None:
    upstream.fake.slow_interval = 0.3
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"], max_concurrent_calls=1)) as gateway:
        held = gateway.stub.StreamChat(stream(model=openai.MODEL_SLOW), metadata=bearer(ALPHA_KEY))
        first = await held.read()
        assert first.delta
        error = await refusal(gateway.stub.Chat(chat(), metadata=bearer(ALPHA_KEY)))
        rest = []
        while (message := await held.read()) is not grpc.aio.EOF:
            rest.append(message)
        assert await held.code() == grpc.StatusCode.OK and rest[-1].finish_reason == pb.FINISH_REASON_STOP
        # The held call ended: its slot is free again.
        assert (await gateway.stub.Chat(chat(), metadata=bearer(ALPHA_KEY))).content == upstream.fake.answer
    assert_refused(error, "CALLER_OVERLOADED", "max_concurrent_calls", retry=True)


async def test_calls_sharing_a_request_id_still_count_as_two_concurrent_calls(
    upstream: Upstream, redis_server: RedisServer
) -> None:
    upstream.fake.slow_interval = 0.3
    keys = {"alpha": entry(ALPHA_KEY, ["*"], max_concurrent_calls=2)}
    limits = ServiceLimits(reserved_output_tokens=RESERVED_OUTPUT)
    settings = make_settings(None, caller_keys=keys, redis_url=redis_server.url)
    async with gateway_for(settings, services=[(upstream.service(), limits)]) as gateway:
        same_id = (*bearer(ALPHA_KEY), ("x-request-id", "reused-id"))
        held = [gateway.stub.StreamChat(stream(model=openai.MODEL_SLOW), metadata=same_id) for _ in range(2)]
        for call in held:
            assert (await call.read()).delta
        # Two calls are in flight under one request id: a third is one too many.
        error = await refusal(gateway.stub.Chat(chat(), metadata=same_id))
        for call in held:
            call.cancel()
    assert_refused(error, "CALLER_OVERLOADED", "max_concurrent_calls", retry=True)


async def test_a_call_that_can_never_fit_the_token_budget_is_refused_without_retry(upstream: Upstream) -> None:
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"], tokens_per_minute=1000)) as gateway:
        error = await refusal(gateway.stub.Chat(chat(max_tokens=2000), metadata=bearer(ALPHA_KEY)))
    assert_refused(error, "TOKEN_QUOTA_EXCEEDED", "tokens_per_minute", retry=False)
    assert error is not None and "max_tokens" in (error.details() or "")
    assert upstream.chat_requests() == []


async def test_reservations_settle_to_the_reported_usage(upstream: Upstream) -> None:
    # Each call reserves its input (a few tokens) + RESERVED_OUTPUT and uses TOTAL_TOKENS (23).
    reserved = estimate_tokens("hi") + 4 + RESERVED_OUTPUT
    budget = reserved + 40  # two reservations at once would not fit; one and a settled call do
    assert openai.TOTAL_TOKENS + reserved <= budget < 2 * reserved
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"], tokens_per_day=budget)) as gateway:
        answers = [await gateway.stub.Chat(chat(), metadata=bearer(ALPHA_KEY)) for _ in range(2)]
        # 2 × 23 used; the third reservation no longer fits, and a retry can (the day window slides).
        remaining = budget - 2 * openai.TOTAL_TOKENS
        assert remaining < reserved
        error = await refusal(gateway.stub.Chat(chat(), metadata=bearer(ALPHA_KEY)))
        fits = await gateway.stub.Chat(
            chat(max_tokens=remaining - reserved + RESERVED_OUTPUT), metadata=bearer(ALPHA_KEY)
        )
    assert all(answer.usage.source == pb.USAGE_SOURCE_REPORTED for answer in answers)
    assert_refused(error, "TOKEN_QUOTA_EXCEEDED", "tokens_per_day", retry=True)
    assert fits.usage.total_tokens == openai.TOTAL_TOKENS


async def test_a_cancelled_stream_settles_to_what_was_delivered(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.fake.slow_interval = 0.5
    budget = 200
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"], tokens_per_minute=budget)) as gateway:
        with caplog.at_level(logging.INFO, logger="aiplatform.access"):
            call = gateway.stub.StreamChat(stream(model=openai.MODEL_SLOW), metadata=bearer(ALPHA_KEY))
            first = await call.read()
            call.cancel()
            await asyncio.sleep(0.3)
        # The cancelled call holds what it used (an estimate), not its reservation: a call
        # reserving all but that fits.
        used = estimate_tokens("hi") + 4 + estimate_tokens(first.delta)
        lines = [record.getMessage() for record in caplog.records if "StreamChat" in record.getMessage()]
        assert any(
            f"tokens={estimate_tokens('hi') + 4}/{estimate_tokens(first.delta)}(estimated)" in line for line in lines
        ), lines
        left = budget - used - (estimate_tokens("hi") + 4)
        fits = await gateway.stub.Chat(chat(max_tokens=left), metadata=bearer(ALPHA_KEY))
        assert fits.content
        error = await refusal(gateway.stub.Chat(chat(max_tokens=left), metadata=bearer(ALPHA_KEY)))
    assert_refused(error, "TOKEN_QUOTA_EXCEEDED", "tokens_per_minute", retry=True)


async def test_a_cut_stream_is_billed_what_went_in_and_came_out_as_an_estimate(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"], tokens_per_minute=10_000)) as gateway:
        with caplog.at_level(logging.INFO, logger="aiplatform.access"):
            messages, error = await collect(
                gateway.stub.StreamChat(stream(model=openai.MODEL_CUT), metadata=bearer(ALPHA_KEY))
            )
            await asyncio.sleep(0.1)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    delivered = "".join(message.delta for message in messages)
    assert delivered and not any(message.HasField("usage") for message in messages)
    line = next(record.getMessage() for record in caplog.records if record.name == "aiplatform.access")
    assert f"tokens={estimate_tokens('hi') + 4}/{estimate_tokens(delivered)}(estimated) caller=alpha" in line


async def test_a_call_refused_before_the_upstream_uses_no_tokens(upstream: Upstream) -> None:
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"], tokens_per_minute=100)) as gateway:
        bad = chat(max_tokens=60)
        bad.messages[0].role = "wizard"  # refused INVALID_ARGUMENT after admission
        for _ in range(3):
            error = await refusal(gateway.stub.Chat(bad, metadata=bearer(ALPHA_KEY)))
            assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Three reservations of 60+ were taken back whole: one more fits.
        assert (await gateway.stub.Chat(chat(max_tokens=60), metadata=bearer(ALPHA_KEY))).content


async def test_an_upstream_that_reports_no_usage_gets_an_estimate_marked_as_such(upstream: Upstream) -> None:
    async with keyed_gateway(upstream, alpha=entry(ALPHA_KEY, ["*"])) as gateway:
        parameters = struct_pb2.Struct()
        parameters.update({"model": openai.MODEL_NO_USAGE})
        request = chat()
        request.parameters.CopyFrom(parameters)
        unary = await gateway.stub.Chat(request, metadata=bearer(ALPHA_KEY))
        messages, error = await collect(
            gateway.stub.StreamChat(stream(model=openai.MODEL_NO_USAGE), metadata=bearer(ALPHA_KEY))
        )
        reported = await gateway.stub.Chat(chat(), metadata=bearer(ALPHA_KEY))
    assert error is None
    expected_output = estimate_tokens(upstream.fake.answer)
    for usage in (unary.usage, messages[-1].usage):
        assert usage.source == pb.USAGE_SOURCE_ESTIMATED
        assert (usage.input_tokens, usage.output_tokens) == (estimate_tokens("hi") + 4, expected_output)
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert not any(message.HasField("usage") for message in messages[:-1])
    assert reported.usage.source == pb.USAGE_SOURCE_REPORTED
    assert reported.usage.total_tokens == openai.TOTAL_TOKENS


def test_keygen_prints_a_key_whose_hash_it_prints() -> None:
    text = keygen_text("team-x")
    key = text.split(": ", 1)[1].split("\n", 1)[0]
    assert key.startswith("aip_") and len(key) > 40
    assert f'sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"' in text
    assert "[keys.team-x]" in text
    assert keygen_text() != keygen_text()
