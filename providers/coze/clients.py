"""The HTTP and cozepy clients every Coze service of one token shares, and the bookkeeping of its chats.

cozepy models what it models well: the auth, the shapes of request bodies, the non-streaming
calls (/v3/chat/cancel). Stream requests are built and sent here (``request``,
``send_stream``) and read by the modules that own them, which close each response they opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import cozepy
import httpx
from cozepy.version import coze_client_user_agent, user_agent

from providers.coze.errors import NOT_CANCELLABLE_CODE, code_number, describe, raise_for_json_error
from providers.errors import ServiceNotReady
from providers.http import tracked_client_options, upstream_call
from providers.limits import DEFAULT_LIMITS

_LOGGER = logging.getLogger(__name__)

# How long to keep reading after a stream's last word for the body to end, so the
# connection goes back to the pool; past it the connection is dropped instead.
DRAIN_SECONDS = 1.0

# How long the background /v3/chat/cancel of a chat the caller abandoned may take;
# shutdown waits at most this long for cancels still in flight.
CANCEL_SECONDS = 3.0


class CozeClients:
    """The HTTP client and cozepy client shared by every Coze service of one token."""

    def __init__(
        self,
        *,
        token: str,
        base_url: str,
        connect_timeout_seconds: float = DEFAULT_LIMITS.connect_timeout_seconds,
        read_timeout_seconds: float = DEFAULT_LIMITS.idle_timeout_seconds,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        # cozepy's own client subclass; its 600 s defaults are replaced by ours.
        self.http = _CozeHTTPClient(
            **tracked_client_options(
                base_url=self.base_url,
                connect_timeout_seconds=connect_timeout_seconds,
                read_timeout_seconds=read_timeout_seconds,
            )
        )
        self.auth = cozepy.AsyncTokenAuth(token)
        self.coze = cozepy.AsyncCoze(auth=self.auth, base_url=self.base_url, http_client=self.http)
        # The headers cozepy identifies itself with on every request, worked out once.
        self._identity = {"User-Agent": user_agent(), "X-Coze-Client-User-Agent": coze_client_user_agent()}
        # URLs without parameter values (a chat in a new conversation), each parsed once:
        # parsing one costs about as much as building the rest of the request (httpx 0.28).
        self._urls: dict[tuple[str, tuple[str, ...]], httpx.URL] = {}
        # Strong references to fire-and-forget calls (the event loop keeps only weak
        # ones); kept here, next to the client they use, so aclose can let them finish.
        self._background: set[asyncio.Task[None]] = set()
        # This gateway's own chat in each conversation, until Coze ended it (see open_turn).
        self._turns: dict[str, asyncio.Event] = {}

    async def request(
        self, path: str, body: dict[str, Any], params: dict[str, str | None] | None = None
    ) -> httpx.Request:
        """A POST of ``body`` (JSON) to ``path`` of the Coze API, as cozepy sends one: its headers and auth."""
        return httpx.Request("POST", self._url(path, params), headers=await self.identity_headers(), json=body)

    async def identity_headers(self) -> dict[str, str]:
        """The headers of every request to Coze, as cozepy sends them: its identity and the auth."""
        headers = dict(self._identity)
        await self.auth.aauthentication(headers)
        return headers

    def _url(self, path: str, params: dict[str, str | None] | None) -> httpx.URL:
        if params and any(params.values()):
            return httpx.URL(f"{self.base_url}{path}", params=params)
        key = (path, tuple(params or ()))
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = httpx.URL(f"{self.base_url}{path}", params=params)
        return url

    async def send_stream(self, request: httpx.Request) -> httpx.Response:
        """Send a stream request; the response returned is the event stream, for the caller to close.

        Raises the typed error of an error answer (JSON where the stream was due, often with
        HTTP 200: Coze started nothing), that response closed.
        """
        response = await self.http.send(request, stream=True)
        try:
            await raise_for_json_error(response)
        except BaseException:
            await response.aclose()
            raise
        return response

    def run_in_background(self, call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``call`` without anyone awaiting it; aclose waits for it before closing the client."""
        task = asyncio.get_running_loop().create_task(call)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def open_turn(self, conversation_id: str) -> asyncio.Event:
        """Note that this gateway runs a chat in ``conversation_id``; set the event returned once Coze ended it.

        Coze runs one chat per conversation (4016 otherwise), and a chat runs on until it
        completes or a cancel lands. A caller that abandons a turn and asks the next one at
        once would otherwise meet its own abandoned turn; ``wait_for_turn`` lets that next
        turn wait for it instead.
        """
        over = asyncio.Event()
        self._turns[conversation_id] = over
        return over

    def close_turn(self, conversation_id: str, over: asyncio.Event) -> None:
        """Coze has ended the chat ``open_turn`` returned ``over`` for."""
        over.set()
        if self._turns.get(conversation_id) is over:
            del self._turns[conversation_id]

    async def wait_for_turn(self, conversation_id: str, timeout: float) -> bool:
        """Wait up to ``timeout`` for this gateway's chat in the conversation to end.

        Returns False when there is none, or it still runs after ``timeout``.
        """
        over = self._turns.get(conversation_id)
        if over is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await over.wait()
        except TimeoutError:
            return False
        return True

    async def cancel_chat(self, conversation_id: str, chat_id: str) -> None:
        """Ask Coze to stop a chat that will not complete; log, never raise, when that fails."""
        try:
            async with upstream_call(), asyncio.timeout(CANCEL_SECONDS):
                await self.coze.chat.cancel(conversation_id=conversation_id, chat_id=chat_id)
        except cozepy.CozeAPIError as error:
            if code_number(error.code) == NOT_CANCELLABLE_CODE:
                # Coze had ended the chat already (e.g. after an error event): nothing was left running.
                _LOGGER.debug("Coze chat %s had ended before its cancel", chat_id)
            else:
                _LOGGER.warning("could not cancel unfinished Coze chat %s: %s", chat_id, describe(error))
        except Exception as error:  # nobody awaits this task: the log is the only place to report it
            _LOGGER.warning("could not cancel unfinished Coze chat %s: %s", chat_id, describe(error))
        else:
            _LOGGER.debug("cancelled unfinished Coze chat %s", chat_id)

    async def aclose(self) -> None:
        """Let background calls finish (each is bounded by its own timeout), then close the pooled connections."""
        if self._background:
            await asyncio.wait(set(self._background))
        await self.http.aclose()


async def drain(sse_events: AsyncIterator[Any]) -> None:
    """Read a stream's events to the end of its body (done, then EOF), so its connection can be reused."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in sse_events:
                pass


class _CozeHTTPClient(cozepy.AsyncHTTPClient):
    """cozepy's httpx client, sending each request straight to its transport when that changes nothing.

    Every request comes built (by cozepy, or by ``CozeClients.request``: URL, headers, auth, body),
    so the client's own layers (auth flow, redirect handling, cookie jar) have nothing to add to a call yet
    cost about 60 µs of CPU on each (benchmarks/RESULTS.md). The direct path keeps what matters:
    the client's timeouts and its response hooks (which track the response for closing). A
    redirect answer (Coze sends none; a misconfigured base URL might) sends the request again
    through httpx's whole handling, which follows it. The transport itself goes through the
    environment's proxy (``tracked_client_options``).
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # type: ignore[no-untyped-call]
        self._transport_only: httpx.AsyncBaseTransport = options["transport"]
        self._direct = self.auth is None

    async def send(self, request: httpx.Request, *, stream: bool = False, **options: Any) -> httpx.Response:
        if not self._direct or options:
            return await super().send(request, stream=stream, **options)
        request.extensions.setdefault("timeout", self.timeout.as_dict())
        response = await self._transport_only.handle_async_request(request)
        for hook in self.event_hooks["response"]:
            await hook(response)
        if response.has_redirect_location and self.follow_redirects:
            await response.aclose()
            return await super().send(request, stream=stream)
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response


class CozeService:
    """What every Coze service shares: the clients, and readiness that depends on them."""

    name: str

    def __init__(self, clients: CozeClients | None, missing_key_reason: str) -> None:
        self._clients = clients
        self._missing_key_reason = missing_key_reason

    def not_ready_reason(self) -> str:
        return "" if self._clients else self._missing_key_reason

    def secrets(self) -> tuple[str, ...]:
        return (self._clients.token,) if self._clients else ()

    async def aclose(self) -> None:
        # Services may share one CozeClients; closing an httpx client twice is harmless.
        if self._clients:
            await self._clients.aclose()

    def _require_clients(self) -> CozeClients:
        if self._clients is None:
            raise ServiceNotReady(f"service {self.name!r} is not ready: {self._missing_key_reason}")
        return self._clients
