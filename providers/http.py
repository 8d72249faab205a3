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
import http.cookiejar
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

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


def body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """A streamed httpx response's body, piece by piece as it arrives.

    When the response came straight from the aiohttp transport (as the Coze client sends,
    ``providers/coze.py``) and its body needs no decoding (no Content-Encoding), the pieces
    come straight from the aiohttp response under it: httpx's layers in between
    (``aiter_bytes``, ``aiter_raw``, the identity decoder, byte counting) cost a few µs per
    piece, 48 µs per 10-token Coze answer (benchmarks/RESULTS.md, run G). Errors are mapped
    to httpx's as its own reading would, and closing the httpx response still releases the
    connection. Otherwise httpx reads and decodes the body.
    """
    aiohttp_response = getattr(response.stream, "_aiohttp_response", None)  # httpx-aiohttp's stream
    if isinstance(aiohttp_response, aiohttp.ClientResponse) and "content-encoding" not in response.headers:
        return _aiohttp_body(aiohttp_response)
    return response.aiter_bytes()


async def _aiohttp_body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    with map_aiohttp_exceptions():
        async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
            yield chunk


class _Transport(AiohttpTransport):
    """httpx-aiohttp's transport, with a hang-up reported as what it is.

    It maps every aiohttp connection error to ``httpx.ConnectTimeout``, so an
    upstream that closes the connection before answering would read as a timeout
    (and not be retried); only a real timeout stays a timeout.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as error:
            if isinstance(error.__cause__, TimeoutError):
                raise
            raise httpx.ConnectError(str(error), request=request) from error.__cause__


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing.

    One client serves every caller, so a cookie an upstream sets for one call would
    otherwise be sent on everybody's later calls.
    """

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


def tracked_client_options(*, base_url: str, connect_timeout: float, read_timeout: float) -> dict[str, Any]:
    """Keyword arguments for an ``httpx.AsyncClient`` (or subclass) for ``base_url`` whose responses are tracked.

    ``read_timeout`` bounds each wait for the next bytes, i.e. the silence
    tolerated between two chunks of a stream; the caller's gRPC deadline bounds
    the whole call. With a transport of its own, httpx ignores the environment's
    proxy settings, so the transport is given the proxy they name for ``base_url``.
    """
    proxy = _environment_proxy(base_url)
    return {
        "timeout": httpx.Timeout(read_timeout, connect=connect_timeout),
        # httpx's API on aiohttp's engine: the same calls at about 60 % of httpcore's CPU per
        # streamed token (benchmarks/RESULTS.md). No pool cap of its own (0 = none for
        # aiohttp): the service's max_concurrent_calls (providers/guard.py) is the limit,
        # and a cap below it would make calls queue silently for a connection.
        "transport": _Transport(
            limits=httpx.Limits(max_connections=0, max_keepalive_connections=100),
            proxy=httpx.Proxy(proxy) if proxy else None,
        ),
        "event_hooks": {"response": [_track_response]},
        "cookies": _NoCookies(),
    }


def upstream_session(*, base_url: str, connect_timeout: float, read_timeout: float) -> aiohttp.ClientSession:
    """A pooled aiohttp session for one provider's upstream; create it inside the event loop that uses it.

    ``read_timeout`` bounds each wait for the next bytes (the silence tolerated between
    two chunks of a stream); the caller's gRPC deadline bounds the whole call. Like the
    httpx clients, it goes through the proxy ``HTTPS_PROXY`` / ``HTTP_PROXY`` name for
    ``base_url`` unless ``NO_PROXY`` exempts its host, decided once here rather than per request.
    """
    return aiohttp.ClientSession(
        proxy=_environment_proxy(base_url),
        # No pool cap of its own (0 = none): the service's max_concurrent_calls
        # (providers/guard.py) is the limit, and a lower cap would queue calls silently.
        # The trust store of the httpx clients (certifi, or SSL_CERT_FILE / SSL_CERT_DIR), so
        # every provider verifies upstreams the same way.
        connector=aiohttp.TCPConnector(limit=0, ssl=httpx.create_ssl_context()),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
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
