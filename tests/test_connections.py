"""Connections and half-sent requests cannot pile up: stream caps, the arrival bound, idle and ping limits.

Driven with raw HTTP/2 frames (the ``h2`` package), as a careless or hostile client would send
them: streams opened and never finished, more streams than announced, idle connections, pings
without end. grpc's own clients would never send most of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aiplatform.v1 import aiplatform_pb2 as pb
from server.app import MAX_PING_STRIKES
from tests.conftest import error_details
from tests.gateway_process import gateway_env, running_gateway
from tests.harness import gateway_for

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/aiplatform.v1.AIPlatformService/Chat"
STREAM_CHAT = "/aiplatform.v1.AIPlatformService/StreamChat"
MIB = 2**20
REFUSED_STREAM = 0x7
ENHANCE_YOUR_CALM = 0xB
DEADLINE_EXCEEDED = str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])


def _framed(message: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, its length, the bytes."""
    return struct.pack(">BI", 0, len(message)) + message


def _text(value: str | bytes) -> str:
    """A header name or value: h2 gives str when told an encoding, though typed as bytes."""
    return value.decode() if isinstance(value, bytes) else value


class RawClient:
    """One HTTP/2 connection spoken frame by frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.events: list[h2.events.Event] = []
        self.closed = False

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int) -> AsyncIterator[RawClient]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.h2.initiate_connection()
        await client.flush()
        try:
            yield client
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def flush(self) -> None:
        self.writer.write(self.h2.data_to_send())
        await self.writer.drain()

    async def open_stream(self, method: str, body: bytes | None = None, *, end: bool = False) -> int:
        """HEADERS of a gRPC call (and ``body``, if any); the request ends only if ``end``."""
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        self.h2.send_headers(stream_id, headers, end_stream=end and body is None)
        if body is not None:
            self.h2.send_data(stream_id, body, end_stream=end)
        await self.flush()
        return stream_id

    async def read_until(self, done: Any, timeout: float) -> list[h2.events.Event]:
        """Read frames until ``done(events)`` holds or the connection closes; the events so far."""
        async with asyncio.timeout(timeout):
            while not done(self.events) and not self.closed:
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    break
                self.events += self.h2.receive_data(data)
                await self.flush()  # acknowledgements h2 owes the server
        return self.events

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    def trailers(self, stream_id: int) -> dict[str, str]:
        """The stream's trailers (or trailers-only response headers) as a dict."""
        for event in self.events:
            if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived) and (
                event.stream_id == stream_id
            ):
                headers = {_text(name): _text(value) for name, value in event.headers}
                if "grpc-status" in headers:
                    return headers
        return {}


def _chat_request() -> bytes:
    return pb.ChatRequest(service_name="echo", messages=[pb.ChatMessage(role="user", content="hi")]).SerializeToString()


async def test_the_stream_limit_is_announced_and_a_stream_past_it_is_refused() -> None:
    async with (
        gateway_for(grace=None, max_streams_per_connection=4) as server,
        RawClient.connect(server.port) as client,
    ):
        await client.read_until(lambda events: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events), 5)
        announced = client.h2.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]
        assert announced == 4
        # h2 keeps to the announced limit itself; a hostile client would not.
        client.h2.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
        client.h2.remote_settings.acknowledge()
        held = [await client.open_stream(CHAT) for _ in range(4)]
        extra = await client.open_stream(CHAT)
        await client.read_until(lambda events: any(isinstance(e, h2.events.StreamReset) for e in events), 5)

    resets = client.of(h2.events.StreamReset)
    assert [(reset.stream_id, reset.error_code) for reset in resets] == [(extra, REFUSED_STREAM)]
    assert all(client.trailers(stream_id) == {} for stream_id in held)  # the first four are still open


@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param(CHAT, None, id="unary, headers only"),
        pytest.param(CHAT, _framed(_chat_request())[:9], id="unary, part of the message"),
        pytest.param(STREAM_CHAT, None, id="stream, headers only"),
        pytest.param(STREAM_CHAT, _framed(b"")[:3], id="stream, part of the length prefix"),
    ],
)
async def test_a_request_that_does_not_arrive_whole_in_time_ends_with_deadline_exceeded(
    method: str, body: bytes | None
) -> None:
    async with (
        gateway_for(grace=None, request_arrival_timeout_seconds=0.5) as server,
        RawClient.connect(server.port) as client,
    ):
        stream_id = await client.open_stream(method, body)
        # The call's own deadline is unset: without the bound it would wait for ever.
        await client.read_until(lambda _: client.trailers(stream_id), 10)
        # The connection stays usable: a whole request on it is answered.
        whole = await client.open_stream(CHAT, _framed(_chat_request()), end=True)
        await client.read_until(lambda _: client.trailers(whole), 10)

    trailers = client.trailers(stream_id)
    assert trailers["grpc-status"] == DEADLINE_EXCEEDED
    assert "did not arrive whole within 0.5 s" in trailers["grpc-message"]
    assert client.trailers(whole)["grpc-status"] == "0"


async def test_a_request_slower_than_the_bound_in_total_but_whole_in_time_is_served() -> None:
    async with (
        gateway_for(grace=None, request_arrival_timeout_seconds=1.0) as server,
        RawClient.connect(server.port) as client,
    ):
        framed = _framed(_chat_request())
        stream_id = await client.open_stream(CHAT, framed[:5])
        await asyncio.sleep(0.3)
        client.h2.send_data(stream_id, framed[5:], end_stream=True)
        await client.flush()
        await client.read_until(lambda _: client.trailers(stream_id), 10)

    assert client.trailers(stream_id)["grpc-status"] == "0"


async def test_an_idle_connection_is_closed_after_max_connection_idle() -> None:
    async with (
        gateway_for(grace=None, max_connection_idle_seconds=0.5) as server,
        RawClient.connect(server.port) as client,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.read_until(lambda events: any(isinstance(e, h2.events.ConnectionTerminated) for e in events), 10)
        waited = loop.time() - started

    goaway = client.of(h2.events.ConnectionTerminated)
    assert goaway and goaway[0].additional_data == b"connection idle"
    assert goaway[0].last_stream_id == 0  # no call was cut: clients reconnect when they next call
    assert 0.4 <= waited < 8, waited


async def test_a_ping_flood_gets_the_connection_closed_with_enhance_your_calm() -> None:
    async with gateway_for(grace=None) as server, RawClient.connect(server.port) as client:
        for index in range(MAX_PING_STRIKES + 3):
            client.h2.ping(index.to_bytes(8, "big"))
            await client.flush()
            await asyncio.sleep(0.05)
        await client.read_until(lambda events: any(isinstance(e, h2.events.ConnectionTerminated) for e in events), 10)

    goaway = client.of(h2.events.ConnectionTerminated)
    assert goaway[0].error_code == ENHANCE_YOUR_CALM
    assert b"too_many_pings" in (goaway[0].additional_data or b"")


async def test_keepalive_pings_a_client_may_send_are_answered_and_keep_the_connection() -> None:
    async with gateway_for(grace=None) as server, RawClient.connect(server.port) as client:
        client.h2.ping(b"keepaliv")
        await client.flush()
        await client.read_until(lambda events: any(isinstance(e, h2.events.PingAckReceived) for e in events), 5)
        stream_id = await client.open_stream(CHAT, _framed(_chat_request()), end=True)
        await client.read_until(lambda _: client.trailers(stream_id), 10)

    assert not client.of(h2.events.ConnectionTerminated)
    assert client.trailers(stream_id)["grpc-status"] == "0"


async def test_a_burst_past_the_call_limit_is_refused_with_retry_info_not_cancelled() -> None:
    limit = 20
    async with gateway_for(grace=None, max_calls_in_flight=limit) as server:
        stub, channel = server.stub, server.channel
        params = {"delay_ms": 2000}
        request = pb.StreamChatRequest(service_name="echo", messages=[pb.ChatMessage(role="user", content="a b")])
        request.parameters.update(params)
        calls = [stub.StreamChat(request) for _ in range(limit)]
        for call in calls:  # every one of them is running (its first word arrived)
            await call.read()
        refused = stub.StreamChat(request)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refused.read()
        # Health stays open when the gateway is full: load balancers must still see it.
        health_stub: Any = health_pb2_grpc.HealthStub(channel)  # its stubs lack the methods
        health = await health_stub.Check(health_pb2.HealthCheckRequest())
        for call in calls:
            call.cancel()

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"limit of {limit} calls in flight" in (caught.value.details() or "")
    details = error_details(caught.value)
    info, retry = details["ErrorInfo"], details["RetryInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "GATEWAY_OVERLOADED"
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.seconds >= 1
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_thousands_of_half_sent_requests_are_ended_and_their_memory_returned() -> None:
    """Before the bounds, 30,000 such streams on one connection held 630 MB after it closed."""
    connections, per_connection = 5, 1000  # 5,000 calls: under AIP_MAX_CALLS_IN_FLIGHT
    env = gateway_env(AIP_REQUEST_ARRIVAL_TIMEOUT_SECONDS="3", AIP_MAX_STREAMS_PER_CONNECTION=str(per_connection))
    async with running_gateway(env, ROOT) as process, process.collected_log() as log:
        async with RawClient.connect(process.port) as warm_up:  # grpc's and the allocator's steady state
            await warm_up.open_stream(CHAT)
            await warm_up.read_until(lambda events: any(isinstance(e, h2.events.TrailersReceived) for e in events), 10)
        before, fds_before = process.rss_bytes(), _descriptors(process.pid)

        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(RawClient.connect(process.port)) for _ in range(connections)]
            streams = [
                [await client.open_stream(CHAT, _framed(_chat_request())[:7]) for _ in range(per_connection)]
                for client in clients
            ]
            await asyncio.sleep(0.5)  # the last HEADERS reach the gateway
            peak = process.rss_bytes()
            for client, opened in zip(clients, streams, strict=True):
                await client.read_until(lambda _, c=client, o=opened: all(c.trailers(s) for s in o), 60)
        # The streams are over and their connections closed: memory goes back within seconds.
        after = peak
        for _ in range(50):
            await asyncio.sleep(0.2)
            after = min(after, process.rss_bytes())
            if after - before < (peak - before) / 3:
                break
        fds_after = _descriptors(process.pid)

    statuses = {
        client.trailers(s)["grpc-status"] for client, opened in zip(clients, streams, strict=True) for s in opened
    }
    assert statuses == {DEADLINE_EXCEEDED}
    assert after - before < (peak - before) / 2, (
        f"5,000 half-sent requests took the RSS up by {(peak - before) / MIB:.0f} MiB, "
        f"and {(after - before) / MIB:.0f} MiB of it stayed after they ended"
    )
    assert fds_after <= fds_before + 2
    assert max(len(line) for line in log) < 400
