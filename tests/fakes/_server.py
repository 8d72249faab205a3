"""What every fake upstream shares: a real aiohttp server on 127.0.0.1 that records what it saw.

`FakeUpstream` starts and stops the server, records every request (`requests`, `wait_for_requests`)
and every client that went away before its response was finished (`disconnects`,
`wait_for_disconnect`), counts the responses still being written (`open_streams`), and gives the
fakes the moves their fault scenarios are made of: cut the connection, stall, split a UTF-8
character across two writes, fail the first requests of an id.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, NoReturn, Self, TypeVar

from aiohttp import web

#: Per-request storage: the log id the fake answers with, and the parsed JSON body (None if absent).
LOG_ID = web.RequestKey("log_id", str)
BODY: web.RequestKey[Any] = web.RequestKey("json_body")

SPLIT_WRITE_PAUSE = 0.01  # long enough for the two halves to leave as separate TCP segments
FLOOD_CHUNKS = 10_000  # deltas in a flood scenario
HUGE_ERROR_CHARS = 1 << 20  # the length of a HUGE_ERROR scenario's error message
BURST_PIECES = 2_000  # deltas in a burst-then-hang-up scenario (each event ~250 bytes: ~500 KB in all)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RequestT = TypeVar("_RequestT")


@dataclass(frozen=True)
class Disconnect:
    """A client that went away before its response was finished."""

    path: str
    scenario: str  # the request's bot_id, workflow_id or model
    time: float  # time.monotonic()
    log_id: str  # the log id the fake answered the request with


class ServerCut(Exception):
    """Raised inside a response after the fake aborted the connection on purpose (not a disconnect)."""


class FakeUpstream(Generic[_RequestT]):
    """A real HTTP server on 127.0.0.1 (port 0) that records requests and disconnects.

    A subclass adds its routes (`_add_routes`), says how a request is recorded (`_record`), how a
    log id looks (`_new_log_id`) and what a wrong key gets (`_auth_failed`).
    """

    #: The response header that carries the request's log id (e.g. ``x-tt-logid``).
    log_id_header: ClassVar[str]
    #: Appended to ``http://host:port`` to make `base_url` (e.g. ``/v1``).
    base_path: ClassVar[str] = ""
    #: What `disconnects` holds (a subclass may add accessors).
    disconnect_type: ClassVar[type[Disconnect]] = Disconnect

    def __init__(self, credential: str) -> None:
        self.base_url = ""
        self.requests: list[_RequestT] = []
        self.disconnects: list[Disconnect] = []
        self.open_streams = 0  # responses being written now
        self.slow_interval = 1.0  # seconds between two deltas of the slow scenario
        self.flaky_failures = 1  # how many requests of a flaky id fail before it answers normally
        self.keep_requests = True  # False for long runs: `requests` then stays empty
        self.flood_sent = 0  # flood deltas written so far, all streams together
        self.flood_bytes = 0  # the bytes of those deltas on the wire
        self.hang_ups = 0  # bursts handed to the connection and followed by a hang-up
        self._credential = credential
        self._attempts: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._stream_transports: set[asyncio.Transport] = set()
        self._disconnect_seen = 0
        self._disconnect_event = asyncio.Event()
        self._request_event = asyncio.Event()
        self._hang_up_event = asyncio.Event()
        self._stopping = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and start serving."""
        self._stopping = False
        app = web.Application(middlewares=[self._record_and_authenticate])
        app.on_response_prepare.append(self._add_log_id)
        self._add_routes(app.router)
        # aiohttp leaves a handler running after its client left unless told to cancel it; the
        # cancellation is how a vanished client gets noticed (and recorded) within milliseconds.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}{self.base_path}"

    async def stop(self) -> None:
        """Stop serving (the port is then refused); responses still open are cut without being recorded."""
        if self._runner is None:
            return
        self._stopping = True
        for transport in list(self._stream_transports):
            transport.abort()
        await self._runner.cleanup()
        self._runner = None

    def forget(self) -> None:
        """Drop what the fake recorded so far (requests, disconnects, counters), e.g. between rounds of a soak."""
        self.requests.clear()
        self.disconnects.clear()
        self._disconnect_seen = 0
        self._attempts.clear()

    async def wait_for_disconnect(self, timeout: float = 2.0) -> Disconnect:
        """Return the next disconnect not yet returned by this method, waiting up to `timeout` seconds.

        Raises:
            TimeoutError: no new disconnect was recorded in time.
        """
        async with asyncio.timeout(timeout):
            while len(self.disconnects) <= self._disconnect_seen:
                self._disconnect_event.clear()
                await self._disconnect_event.wait()
        disconnect = self.disconnects[self._disconnect_seen]
        self._disconnect_seen += 1
        return disconnect

    async def wait_for_requests(self, path: str, count: int = 1, timeout: float = 2.0) -> list[_RequestT]:
        """Every recorded request to `path`, once there are at least `count`, waiting up to `timeout` seconds.

        Raises:
            TimeoutError: fewer than `count` such requests arrived in time.
        """
        async with asyncio.timeout(timeout):
            while True:
                matching = [request for request in self.requests if getattr(request, "path", None) == path]
                if len(matching) >= count:
                    return matching
                self._request_event.clear()
                await self._request_event.wait()

    async def wait_for_hang_up(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` bursts were sent and followed by a hang-up.

        Raises:
            TimeoutError: fewer hang-ups happened in time.
        """
        async with asyncio.timeout(timeout):
            while self.hang_ups < count:
                self._hang_up_event.clear()
                await self._hang_up_event.wait()

    # --- for subclasses ---

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    def _record(self, request: web.Request, body: Any) -> _RequestT:
        """The record of a request; runs before the key is checked."""
        raise NotImplementedError

    def _new_log_id(self) -> str:
        raise NotImplementedError

    def _auth_failed(self) -> web.Response:
        raise NotImplementedError

    # --- plumbing ---

    @web.middleware
    async def _record_and_authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[LOG_ID] = self._new_log_id()
        body: Any = None
        # A multipart body (a file upload) is left unread: its handler reads it part by part,
        # which aiohttp allows only while the body is still unread.
        raw = b"" if request.content_type == "multipart/form-data" else await request.read()
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        request[BODY] = body
        record = self._record(request, body)
        if self.keep_requests:
            self.requests.append(record)
            self._request_event.set()
        if request.headers.get("Authorization") != f"Bearer {self._credential}":
            return self._auth_failed()
        return await handler(request)

    async def _add_log_id(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers[self.log_id_header] = request.get(LOG_ID) or self._new_log_id()

    def _fails_this_time(self, scenario_id: str, failures: int) -> bool:
        """Count a request of ``scenario_id``; True while it is one of the first ``failures`` of that id."""
        self._attempts[scenario_id] += 1
        return self._attempts[scenario_id] <= failures

    @contextlib.asynccontextmanager
    async def _watching(self, request: web.Request, scenario: str) -> AsyncIterator[None]:
        """Record a disconnect if the client leaves before the response inside is finished."""
        transport = request.transport
        self.open_streams += 1
        try:
            if transport is not None:
                self._stream_transports.add(transport)
            yield
        except ServerCut:
            pass
        except asyncio.CancelledError:
            # handler_cancellation: the connection was lost while the handler awaited something.
            if not self._stopping:
                self._record_disconnect(request, scenario)
            raise
        except ConnectionError:
            # A write hit a connection the client had already closed.
            if not self._stopping:
                self._record_disconnect(request, scenario)
        finally:
            self.open_streams -= 1
            if transport is not None:
                self._stream_transports.discard(transport)

    @contextlib.asynccontextmanager
    async def _event_stream(
        self,
        request: web.Request,
        scenario: str,
        content_type: str = "text/event-stream",
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[web.StreamResponse]:
        """Open an SSE response; record a disconnect if the client leaves before it is finished."""
        response = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-cache", **(headers or {})}
        )
        async with self._watching(request, scenario):
            await response.prepare(request)
            yield response
            # The body is finished only once the terminating chunk went out.
            await response.write_eof()

    async def _write_flood_delta(self, response: web.StreamResponse, event: bytes) -> None:
        """Write one delta of a flood scenario, counting it."""
        await response.write(event)
        self.flood_sent += 1
        self.flood_bytes += len(event)

    async def _burst_then_hang_up(
        self, request: web.Request, response: web.StreamResponse, events: list[bytes]
    ) -> NoReturn:
        """Send ``events`` at once, whether or not the client reads, then close the connection cleanly
        without finishing the body (no terminating chunk): what a crash, a deploy or a proxy's idle-kill
        looks like after a burst. Every byte is sent: the kernel and asyncio hold what the client has
        not read yet, and the FIN follows the last byte."""
        transport = request.transport
        assert transport is not None
        # aiohttp's writes would otherwise wait for the client to read (back-pressure).
        transport.set_write_buffer_limits(high=1 << 30)
        for event in events:
            await response.write(event)
        transport.close()
        self.hang_ups += 1
        self._hang_up_event.set()
        raise ServerCut

    def _record_disconnect(self, request: web.Request, scenario: str) -> None:
        self.disconnects.append(self.disconnect_type(request.path, scenario, time.monotonic(), request[LOG_ID]))
        self._disconnect_event.set()


@contextlib.asynccontextmanager
async def http_server(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """A one-off HTTP server on 127.0.0.1 answering POSTs to ``routes``; yields its base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def misbehaving_server(behaviour: Literal["hang up", "say nothing"]) -> AsyncIterator[int]:
    """A bare TCP server on 127.0.0.1 that hangs up on every request, or never answers; yields its port."""
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "hang up":
            await reader.read(1)
        else:
            await release.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        # Let the handlers close their connections before the loop goes away.
        release.set()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)


def echoed_headers(request: web.Request) -> str:
    """An error text that quotes the request's headers, Authorization included, as a careless proxy would."""
    return "request rejected; received headers: " + "; ".join(f"{k}: {v}" for k, v in request.headers.items())


def huge_error_text() -> str:
    """A 1 MiB error message."""
    return ("upstream stack trace line " * (HUGE_ERROR_CHARS // 26 + 1))[:HUGE_ERROR_CHARS]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cut(request: web.Request) -> NoReturn:
    """Abort the TCP connection without finishing the body."""
    assert request.transport is not None
    request.transport.abort()
    raise ServerCut


async def stall() -> None:
    """Send nothing more; the handler is cancelled when the client goes away."""
    await asyncio.Event().wait()


async def write_split_utf8(response: web.StreamResponse, payload: bytes) -> None:
    """Write an event in two network writes that split its first multi-byte UTF-8 character."""
    first_non_ascii = next((i for i, byte in enumerate(payload) if byte >= 0x80), None)
    if first_non_ascii is None:
        await response.write(payload)
        return
    await response.write(payload[: first_non_ascii + 1])
    await asyncio.sleep(SPLIT_WRITE_PAUSE)
    await response.write(payload[first_non_ascii + 1 :])


def dumps(value: Any) -> str:
    """Compact, UTF-8, one-line JSON (cozepy needs each ``data:`` JSON on a single line)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def split_text(text: str, size: int) -> list[str]:
    """``text`` in pieces of ``size`` characters; joined they equal ``text``."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def burst_pieces() -> list[str]:
    """The deltas of a burst scenario, in order: each names its index, and is padded to ~150 characters."""
    return [f"<{index:05d}>" + "y" * 140 + " " for index in range(BURST_PIECES)]


def flood_pieces() -> list[str]:
    """The deltas of a flood scenario, in order: small, and each one names its index."""
    return [f"{index} " for index in range(FLOOD_CHUNKS)]
