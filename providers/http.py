"""Upstream HTTP: one pooled client per provider, every response closed however its call ends.

Two clients, one engine. Providers that own their wire format (OpenAI-compatible) use
an aiohttp session from ``upstream_session``: the least CPU per call and per token
(benchmarks/RESULTS.md), and ``async with session.post(...)`` releases the response
when the block ends, however it ends. cozepy needs an httpx client: it gets one on
aiohttp's engine (``tracked_client_options``), with the tracker below.

A provider using the httpx client opens its upstream call inside ``async with upstream_call() as call``.
Every HTTP response the shared client produces inside that block is recorded on
``call`` (through an httpx response hook) and closed when the block ends, however
it ends: normally, by an exception, or by the caller cancelling. This matters
because cozepy never closes a stream whose iteration is abandoned: the
connection stays open, and the upstream keeps generating (and billing), until
a garbage-collection cycle happens to find it.
"""

from __future__ import annotations

import contextlib
import functools
import http.cookiejar
import os
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

_CURRENT_CALL: ContextVar[UpstreamCall | None] = ContextVar("aiplatform_upstream_call", default=None)


class UpstreamCall:
    """The HTTP responses opened for one upstream call."""

    __slots__ = ("responses",)

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []

    def header(self, name: str) -> str:
        """The header of the latest response, e.g. Coze's ``x-tt-logid``; "" when absent."""
        for response in reversed(self.responses):
            value = response.headers.get(name)
            if value:
                return str(value)
        return ""

    async def aclose(self) -> None:
        """Close every response; closing an unfinished one drops its connection."""
        for response in self.responses:
            await response.aclose()


@contextlib.asynccontextmanager
async def upstream_call() -> AsyncIterator[UpstreamCall]:
    """Track the responses opened inside the block and close them when it ends."""
    call = UpstreamCall()
    token = _CURRENT_CALL.set(call)
    try:
        yield call
    finally:
        # A generator finalised outside the task that started it runs in another
        # context, where the token is not valid; the variable then dies with that task.
        with contextlib.suppress(ValueError):
            _CURRENT_CALL.reset(token)
        await call.aclose()


async def _track_response(response: httpx.Response) -> None:
    call = _CURRENT_CALL.get()
    if call is not None:
        call.responses.append(response)


# The most of a body read at once: a reader that fell behind the upstream would otherwise
# get the whole receive buffer in one piece, and split it into lines at once.
READ_CHUNK_BYTES = 16 * 1024

# aiohttp's StreamReader keeps a connection error (a cut, a truncated chunked body, a read
# timeout) beside the bytes it already received, and every public read method raises that
# error *first*: whatever the reader had not consumed yet, often most of a burst when the
# caller reads slowly, would be lost. No public interface hands those bytes out once the
# error is set, so ``received_chunks`` takes them with ``_read_nowait``, the method its
# public reads end in. It is looked up here, at import, so an aiohttp that renamed it fails
# the gateway's start (and its tests) instead of silently losing bytes again.
_read_buffered: Callable[[aiohttp.StreamReader, int], bytes] = aiohttp.StreamReader._read_nowait


async def received_chunks(
    reader: aiohttp.StreamReader,
    size: int = READ_CHUNK_BYTES,
    errors: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> AsyncIterator[bytes]:
    """Every byte of an aiohttp body, at most ``size`` at a time; a connection error comes after the last byte.

    httpx's own engine behaves this way (every received byte, then ``RemoteProtocolError``);
    aiohttp's ``iter_chunked`` raises the error before the bytes it buffered. ``errors`` wraps
    the reading (e.g. to map aiohttp's exceptions to httpx's), here so that no generator layer
    is added per piece.
    """
    with errors():
        try:
            async for chunk in reader.iter_chunked(size):
                yield chunk
        except Exception:
            while reader._buffer:  # private, as _read_buffered above
                yield _read_buffered(reader, size)
            raise


def body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """A streamed httpx response's body, piece by piece as it arrives, every received byte before an error.

    When the response came from the aiohttp transport (``tracked_client_options``) and its
    body needs no decoding (no Content-Encoding), the pieces come straight from the aiohttp
    response under it: httpx's layers in between (``aiter_bytes``, ``aiter_raw``, the
    identity decoder, byte counting) cost a few µs per piece, 48 µs per 10-token Coze answer
    (benchmarks/RESULTS.md, run G). Errors are mapped to httpx's as its own reading would,
    and closing the httpx response still releases the connection. Otherwise httpx reads and
    decodes the body, from the same lossless stream.
    """
    stream = response.stream
    if isinstance(stream, _ReceivedBytesStream) and "content-encoding" not in response.headers:
        return stream.raw_chunks()
    return response.aiter_bytes()


class _ReceivedBytesStream(AiohttpResponseStream):
    """httpx-aiohttp's response body, read with ``received_chunks`` so no received byte is lost."""

    def __init__(self, aiohttp_response: aiohttp.ClientResponse) -> None:
        super().__init__(aiohttp_response)
        self._response = aiohttp_response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.raw_chunks()

    def raw_chunks(self) -> AsyncIterator[bytes]:
        """The body as received (still encoded), with aiohttp's errors mapped to httpx's."""
        return received_chunks(self._response.content, self.CHUNK_SIZE, map_aiohttp_exceptions)


class _Transport(AiohttpTransport):
    """httpx-aiohttp's transport, with a hang-up reported as what it is and no received byte lost.

    It maps every aiohttp connection error to ``httpx.ConnectTimeout``. Only a failure to
    connect becomes ``httpx.ConnectError`` here (the request never reached the upstream, so
    it may be sent again); a connection the upstream closed before answering becomes
    ``httpx.RemoteProtocolError``, as on httpx's own engine (the upstream had the request and
    may have started on it); a real timeout stays a timeout.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.ConnectTimeout as error:
            cause = error.__cause__
            if isinstance(cause, TimeoutError):
                raise
            if isinstance(cause, aiohttp.ClientConnectorError):
                raise httpx.ConnectError(str(error), request=request) from cause
            raise httpx.RemoteProtocolError(str(error), request=request) from cause
        stream = response.stream
        assert isinstance(stream, AiohttpResponseStream)
        response.stream = _ReceivedBytesStream(stream._aiohttp_response)
        return response


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing.

    One client serves every caller, so a cookie an upstream sets for one call would
    otherwise be sent on everybody's later calls.
    """

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


def tracked_client_options(
    *, base_url: str, connect_timeout_seconds: float, read_timeout_seconds: float
) -> dict[str, Any]:
    """Keyword arguments for an ``httpx.AsyncClient`` (or subclass) for ``base_url`` whose responses are tracked.

    ``read_timeout_seconds`` bounds each wait for the next bytes, i.e. the silence
    tolerated between two chunks of a stream; the caller's gRPC deadline bounds
    the whole call. With a transport of its own, httpx ignores the environment's
    proxy settings, so the transport is given the proxy they name for ``base_url``.
    """
    proxy = _environment_proxy(base_url)
    return {
        "timeout": httpx.Timeout(read_timeout_seconds, connect=connect_timeout_seconds),
        # httpx's API on aiohttp's engine: the same calls at about 60 % of httpcore's CPU per
        # streamed token (benchmarks/RESULTS.md). No pool cap of its own (0 = none for
        # aiohttp): the service's max_concurrent_calls (providers/guard.py) is the limit,
        # and a cap below it would make calls queue silently for a connection.
        "transport": _Transport(
            verify=upstream_ssl_context(),
            limits=httpx.Limits(max_connections=0, max_keepalive_connections=100),
            proxy=httpx.Proxy(proxy) if proxy else None,
        ),
        "event_hooks": {"response": [_track_response]},
        "cookies": _NoCookies(),
    }


def upstream_ssl_context() -> ssl.SSLContext:
    """The trust store every upstream connection verifies against: certifi, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``.

    Built once per process and shared by every client: building one reads the whole CA bundle,
    ~20 ms of CPU, and built on a service's first call it stalled every call in flight
    (benchmarks/RESULTS.md run N). Keyed by those two variables, so a changed setting is honoured.
    """
    return _ssl_context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _ssl_context_for(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return httpx.create_ssl_context()


def upstream_session(
    *, base_url: str, connect_timeout_seconds: float, read_timeout_seconds: float, ssl_context: ssl.SSLContext
) -> aiohttp.ClientSession:
    """A pooled aiohttp session for one provider's upstream; create it inside the event loop that uses it.

    ``read_timeout_seconds`` bounds each wait for the next bytes (the silence tolerated between
    two chunks of a stream); the caller's gRPC deadline bounds the whole call. Like the
    httpx clients, it goes through the proxy ``HTTPS_PROXY`` / ``HTTP_PROXY`` name for
    ``base_url`` unless ``NO_PROXY`` exempts its host, decided once here rather than per request.
    """
    return aiohttp.ClientSession(
        proxy=_environment_proxy(base_url),
        # No pool cap of its own (0 = none): the service's max_concurrent_calls
        # (providers/guard.py) is the limit, and a lower cap would queue calls silently.
        # The trust store of the httpx clients (upstream_ssl_context), so every provider
        # verifies upstreams the same way.
        connector=aiohttp.TCPConnector(limit=0, ssl=ssl_context),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_seconds, sock_read=read_timeout_seconds),
        # One session serves every caller: a cookie one upstream answer sets must not
        # ride along on everybody's later calls.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def _environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``; None when there is none or NO_PROXY exempts its host."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)
