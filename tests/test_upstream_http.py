"""The shared upstream HTTP client: every response of a call closed, no cookies kept between callers."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator
from typing import Any, Literal

import certifi
import httpx
import pytest
from aiohttp import web

from aiplatform.v1 import aiplatform_pb2 as pb
from providers.coze import CozeClients
from providers.http import body_chunks, tracked_client_options, upstream_call, upstream_ssl_context
from providers.openai import OpenAIChatService
from tests.fakes import openai as openai_fake
from tests.fakes._server import closed_port, http_server, misbehaving_server
from tests.fakes.openai import FakeOpenAI
from tests.harness import gateway_for


async def test_cookies_an_upstream_sets_are_not_sent_on_later_calls() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=caller-one; Path=/"}, text="ok")

    options = tracked_client_options(base_url="http://upstream.test", connect_timeout_seconds=1, read_timeout_seconds=1)
    async with httpx.AsyncClient(**{**options, "transport": httpx.MockTransport(handler)}) as client:
        await client.get("http://upstream.test/a")
        await client.get("http://upstream.test/b")
    assert seen == [None, None]


async def test_every_response_opened_in_a_call_is_closed_when_it_ends() -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x"

    options = tracked_client_options(base_url="http://upstream.test", connect_timeout_seconds=1, read_timeout_seconds=1)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=endless()))
    async with httpx.AsyncClient(**{**options, "transport": transport}) as client:
        async with upstream_call() as call:
            first = await client.send(client.build_request("GET", "http://upstream.test/1"), stream=True)
            second = await client.send(client.build_request("GET", "http://upstream.test/2"), stream=True)
            assert call.responses == [first, second]
            assert not first.is_closed and not second.is_closed
        assert first.is_closed and second.is_closed
        # Outside a call nothing is tracked.
        outside = await client.send(client.build_request("GET", "http://upstream.test/3"), stream=True)
        assert outside not in call.responses
        await outside.aclose()


async def test_a_refused_connection_a_hang_up_and_a_silence_are_told_apart() -> None:
    # Refused: the request never left (ConnectError, may be sent again). Hung up after the
    # request went out: the upstream had it (RemoteProtocolError, as on httpx's own engine).
    options = tracked_client_options(base_url="http://127.0.0.1", connect_timeout_seconds=1, read_timeout_seconds=0.2)
    cases: list[tuple[Literal["hang up", "say nothing"], type[Exception]]] = [
        ("hang up", httpx.RemoteProtocolError),
        ("say nothing", httpx.TimeoutException),
    ]
    async with httpx.AsyncClient(**options) as client:
        for behaviour, expected in cases:
            async with misbehaving_server(behaviour) as port:
                with pytest.raises(expected):
                    await client.get(f"http://127.0.0.1:{port}/")
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{closed_port()}/")


async def test_the_coze_client_sends_directly_yet_follows_redirects_and_tracks_every_response() -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/v3/new")

    async def new(request: web.Request) -> web.Response:
        return web.Response(text="answered here")

    async with http_server({"/v3/old": moved, "/v3/new": new}) as base:
        clients = CozeClients(token="pat_test", base_url=base)
        try:
            for path in ("/v3/new", "/v3/old"):
                async with upstream_call() as call:
                    # As cozepy sends: a built request, no per-call options.
                    response = await clients.http.send(httpx.Request("POST", f"{base}{path}", json={}), stream=False)
                    assert (response.status_code, response.text) == (200, "answered here")
                    assert response in call.responses
                assert all(tracked.is_closed for tracked in call.responses)
            # A redirect answer sends the request again through httpx's own handling, which follows it.
            assert [tracked.status_code for tracked in call.responses] == [307, 307, 200]
        finally:
            await clients.aclose()


async def test_with_an_environment_proxy_the_coze_client_goes_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    proxied: list[str] = []

    async def forward_proxy(request: web.Request) -> web.Response:
        proxied.append(str(request.url))  # a proxy gets the absolute URL
        return web.Response(text="via proxy")

    async with http_server({"/v3/chat": forward_proxy}) as proxy:
        for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        clients = CozeClients(token="pat_test", base_url="http://coze.example")
        try:
            response = await clients.http.send(httpx.Request("POST", "http://coze.example/v3/chat", json={}))
        finally:
            await clients.aclose()
    assert (response.status_code, response.text) == (200, "via proxy")
    assert proxied == ["http://coze.example/v3/chat"]


async def test_a_streamed_body_comes_straight_from_aiohttp_unless_it_needs_decoding() -> None:
    body = b"event:conversation.message.delta\ndata:{}\n\n" * 40

    async def in_pieces(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(body), 100):
            await response.write(body[start : start + 100])
        return response

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(body[:100])
        await asyncio.sleep(1)  # past the 0.3 s read timeout
        return response

    async with http_server({"/pieces": in_pieces, "/gzipped": gzipped, "/stalls": stalls}) as base:
        clients = CozeClients(token="pat_test", base_url=base, read_timeout_seconds=0.3)
        try:
            for path, straight in (("/pieces", True), ("/gzipped", False)):
                async with upstream_call() as call:
                    # As cozepy sends: a built request, straight to the transport.
                    response = await clients.http.send(httpx.Request("POST", f"{base}{path}"), stream=True)
                    assert b"".join([chunk async for chunk in body_chunks(response)]) == body
                    # httpx marks a body it read itself: a plain one must skip its layers (a newer
                    # httpx-aiohttp that moved its response would otherwise make this silently slower).
                    assert response.is_stream_consumed is not straight
                assert all(tracked.is_closed for tracked in call.responses)
            # Silence past the read timeout is httpx's ReadTimeout, as when httpx reads the body.
            async with upstream_call():
                response = await clients.http.send(httpx.Request("POST", f"{base}/stalls"), stream=True)
                with pytest.raises(httpx.ReadTimeout):
                    async for _ in body_chunks(response):
                        pass
        finally:
            await clients.aclose()


async def test_a_services_first_call_builds_no_trust_store(
    fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Building one reads the whole CA bundle (~20 ms of CPU): on a fresh gateway's first call
    # it stalled every call in flight. It is built at start-up, once, and shared.
    service = OpenAIChatService("openai", base_url=fake_openai.base_url, api_key=fake_openai.api_key)
    options = tracked_client_options(base_url="http://127.0.0.1", connect_timeout_seconds=1, read_timeout_seconds=1)
    assert options["transport"].ssl_context is upstream_ssl_context()
    built: list[object] = []
    real = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    async with gateway_for(services=[service]) as gateway:
        request = pb.StreamChatRequest(service_name="openai", messages=[pb.ChatMessage(role="user", content="hi")])
        request.parameters["model"] = openai_fake.MODEL_NORMAL
        replies = [reply async for reply in gateway.stub.StreamChat(request)]
    assert replies[-1].finish_reason == pb.FINISH_REASON_STOP
    assert "".join(reply.delta for reply in replies)
    assert built == []


def test_the_trust_store_follows_a_changed_ssl_cert_file(monkeypatch: pytest.MonkeyPatch) -> None:
    default = upstream_ssl_context()
    assert upstream_ssl_context() is default
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert upstream_ssl_context() is not default
