"""Coze providers: bot chat (chat v3) and workflows, over one shared, pooled HTTP client.

cozepy's ``AsyncCoze`` sends the chat request (body, auth, JSON error answers), but
every stream body, chat and workflow, is read with our own SSE reader on the same
client. cozepy's reader splits lines at U+2028, U+0085 and other separators that
JSON carries raw inside strings, fails on heartbeat comments, spends most of the
CPU per token on per-line work and pydantic, and swallows the workflow ``Done``
event, without which a stream that was cut cleanly cannot be told from one that finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, ClassVar

# cozepy imports authlib.jose, which warns at every start; the gateway uses no JWT auth.
# authlib installs an "always" filter for its warnings on import, so ours must come after it.
import authlib.deprecate  # noqa: F401
import httpx
import pydantic

from providers.base import (
    ChatEvent,
    ChatFinished,
    ChatInput,
    ChatService,
    FinishReason,
    Message,
    ParameterSpec,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    Usage,
    WorkflowInput,
    WorkflowInterrupt,
    WorkflowNodeEvent,
    WorkflowResult,
    WorkflowResume,
    WorkflowService,
    reject_unknown_parameters,
    string_map_parameter,
    string_parameter,
)
from providers.errors import (
    InvalidRequest,
    ServiceNotReady,
    UpstreamAuthError,
    UpstreamConversationBusy,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    connection_failed,
    quote_input,
)
from providers.http import UpstreamCall, body_chunks, tracked_client_options, upstream_call
from providers.limits import DEFAULT_LIMITS
from providers.sse import ServerSentEvent, iter_sse

warnings.filterwarnings("ignore", message=r"authlib\.jose module is deprecated")
import cozepy  # noqa: E402

# cozepy prints through a handler of its own, its WARNINGs quote whatever Coze answered,
# unbounded and unscrubbed (a proxy echoing the token, a 1 MB error page), and at DEBUG it
# logs every event line (message contents). The gateway logs each such failure itself,
# scrubbed and bounded (server/errors.py), so cozepy's records go through the application's
# handlers, and only from ERROR up.
_COZEPY_LOGGER = logging.getLogger("cozepy")
_COZEPY_LOGGER.handlers.clear()
_COZEPY_LOGGER.propagate = True
_COZEPY_LOGGER.setLevel(logging.ERROR)

_LOGGER = logging.getLogger(__name__)

PROVIDER = "coze"
LOG_ID_HEADER = "x-tt-logid"

# Event data is parsed leniently: JSON wants control characters inside strings
# escaped, but one sent raw is still the caller's text, not a reason to fail the answer.
_EVENT_JSON = json.JSONDecoder(strict=False)

# cozepy warns once per unknown enum value (e.g. message type "knowledge", which
# Coze's own docs use); the gateway ignores such messages, so the warning is noise.
warnings.filterwarnings("ignore", message=r"Unknown \w+ value", category=UserWarning, module=r"cozepy\.")


# How long to keep reading after chat.completed for the body to end, so the
# connection goes back to the pool; past it the connection is dropped instead.
_DRAIN_SECONDS = 1.0

# How long the background /v3/chat/cancel of a chat the caller abandoned may take;
# shutdown waits at most this long for cancels still in flight.
_CANCEL_SECONDS = 3.0

# Coze business codes (and the HTTP statuses cozepy reports in their place when
# a body is not JSON) by the failure they mean. Codes from Coze's error-code page.
_AUTH_CODES = frozenset({401, 403, 4100, 4101, 700012006})
_NOT_FOUND_CODES = frozenset({404, 4001, 4002, 4006, 4012, 4021, 4200, 4314})
_RATE_LIMIT_CODES = frozenset({429, 4008, 4009, 4013, 4020})
_BAD_REQUEST_CODES = frozenset({400, 4000, 4003, 4004, 4005, 4010, 4105})
_REJECTED_CODES = frozenset({4011, 4014, 4015, 4019, 4022, 4102, 4315, 6003})
_CONVERSATION_BUSY_CODE = 4016  # "a chat is already running in this conversation": clears when it ends
_NOT_CANCELLABLE_CODE = 4104  # the chat to cancel has already ended


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
        self.coze = cozepy.AsyncCoze(auth=cozepy.AsyncTokenAuth(token), base_url=self.base_url, http_client=self.http)
        # Strong references to fire-and-forget calls (the event loop keeps only weak
        # ones); kept here, next to the client they use, so aclose can let them finish.
        self._background: set[asyncio.Task[None]] = set()
        # This gateway's own chat in each conversation, until Coze ended it (see open_turn).
        self._turns: dict[str, asyncio.Event] = {}

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

    async def aclose(self) -> None:
        """Let background calls finish (each is bounded by its own timeout), then close the pooled connections."""
        if self._background:
            await asyncio.wait(set(self._background))
        await self.http.aclose()


class _CozeHTTPClient(cozepy.AsyncHTTPClient):
    """cozepy's httpx client, sending each request straight to its transport when that changes nothing.

    cozepy builds every ``httpx.Request`` itself (URL, headers, auth, body), so the client's
    own layers (auth flow, redirect handling, cookie jar) have nothing to add to a call yet
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


class _CozeClientUser:
    """What both Coze services share: the clients, and readiness that depends on them."""

    name: str

    def __init__(self, clients: CozeClients | None, missing_key_reason: str) -> None:
        self._clients = clients
        self._missing_key_reason = missing_key_reason

    def not_ready_reason(self) -> str:
        return "" if self._clients else self._missing_key_reason

    def secrets(self) -> tuple[str, ...]:
        return (self._clients.token,) if self._clients else ()

    async def aclose(self) -> None:
        # Both services may share one CozeClients; closing an httpx client twice is harmless.
        if self._clients:
            await self._clients.aclose()

    def _require_clients(self) -> CozeClients:
        if self._clients is None:
            raise ServiceNotReady(f"service {self.name!r} is not ready: {self._missing_key_reason}")
        return self._clients


class CozeChatService(_CozeClientUser, ChatService):
    """A Coze bot, through chat v3 streaming."""

    provider: ClassVar[str] = PROVIDER

    def __init__(
        self,
        name: str,
        clients: CozeClients | None,
        *,
        default_bot_id: str = "",
        description: str = "",
        missing_key_reason: str = "COZE_API_TOKEN is not set",
    ) -> None:
        ChatService.__init__(
            self,
            name,
            description or "Coze bot chat (chat v3). Roles: user, assistant.",
            (
                ParameterSpec(
                    "bot_id",
                    "string",
                    f"the bot to chat with (default {default_bot_id})" if default_bot_id else "the bot to chat with",
                    required=not default_bot_id,
                ),
                ParameterSpec("custom_variables", "object", "the bot's custom variables (string values)"),
                ParameterSpec("meta_data", "object", "metadata kept with the chat (string values)"),
            ),
        )
        _CozeClientUser.__init__(self, clients, missing_key_reason)
        self._default_bot_id = default_bot_id

    async def stream_chat(self, request: ChatInput) -> AsyncGenerator[ChatEvent, None]:
        clients = self._require_clients()
        messages = _coze_messages(request.messages)
        reject_unknown_parameters(request.parameters, frozenset(spec.name for spec in self.parameters))
        bot_id = string_parameter(request.parameters, "bot_id", self._default_bot_id)
        if not bot_id:
            raise InvalidRequest("parameters.bot_id", "is required (no COZE_DEFAULT_BOT_ID is configured)")
        custom_variables = string_map_parameter(request.parameters, "custom_variables")
        meta_data = string_map_parameter(request.parameters, "meta_data")
        # Coze keeps memory per user_id; a constant one would merge every caller's memory.
        user_id = request.user_id or f"aiplatform-anonymous-{uuid.uuid4().hex}"

        async def create_chat() -> None:
            # cozepy's public chat.stream() would read the body itself; _create stops at the
            # headers, after raising CozeAPIError for a JSON error answer instead of a stream.
            await clients.coze.chat._create(
                bot_id=bot_id,
                user_id=user_id,
                stream=True,
                additional_messages=messages,
                conversation_id=request.conversation_id or None,
                custom_variables=custom_variables,
                meta_data=meta_data,
            )

        async with upstream_call() as call:
            with _map_coze_errors(call), _CancelUnlessEnded(clients, request.conversation_id) as chat_state:
                await _create_once_conversation_is_free(clients, request.conversation_id, create_chat)
                chat_state.turn_opened()
                response = _stream_response(call)
                streamed_message_ids: set[str] = set()
                follow_ups: list[str] = []
                async with contextlib.aclosing(iter_sse(body_chunks(response))) as events:
                    async for sse in events:
                        kind = sse.event
                        # Deltas are nearly every event: one JSON decode and a few dict lookups each. Only the
                        # chat's final event (usage, tool calls, error) goes through cozepy's pydantic model.
                        if kind == "conversation.message.delta":
                            delta = _event_json(sse, call)
                            if delta.get("type") != "answer":
                                continue
                            streamed_message_ids.add(str(delta.get("id") or ""))
                            reasoning = delta.get("reasoning_content")
                            if reasoning and isinstance(reasoning, str):
                                yield ReasoningDelta(reasoning)
                            content = delta.get("content")
                            if content and isinstance(content, str):
                                yield TextDelta(content)
                        elif kind == "conversation.message.completed":
                            message = _event_json(sse, call)
                            content = message.get("content")
                            if not content or not isinstance(content, str):
                                continue
                            message_type = message.get("type")
                            if message_type == "follow_up":
                                follow_ups.append(content)
                            elif message_type == "answer" and str(message.get("id") or "") not in streamed_message_ids:
                                # An answer that arrived whole, without deltas, is still part of the answer.
                                yield TextDelta(content)
                        elif kind == "conversation.chat.created":
                            created = _event_json(sse, call)
                            chat_state.started(str(created.get("conversation_id") or ""), str(created.get("id") or ""))
                        elif kind == "conversation.chat.completed":
                            chat = _chat(sse, call)
                            chat_state.ended = True
                            yield _chat_finished(chat, FinishReason.STOP, follow_ups)
                            await _drain(events)
                            return
                        elif kind == "conversation.chat.requires_action":
                            chat = _chat(sse, call)
                            chat_state.ended = True
                            yield _chat_finished(chat, FinishReason.TOOL_CALLS, follow_ups, _tool_calls(chat))
                            await _drain(events)
                            return
                        elif kind == "conversation.chat.failed":
                            chat_state.ended = True
                            raise _chat_failed(_event_json(sse, call), call)
                        elif kind == "error":
                            raise _error_event(sse.data, call)
                        # Everything else (in_progress, audio, done, unknown) is not answer text.
                raise UpstreamUnavailable(
                    "Coze stream ended before conversation.chat.completed",
                    provider=PROVIDER,
                    log_id=call.header(LOG_ID_HEADER),
                )


class CozeWorkflowService(_CozeClientUser, WorkflowService):
    """Coze workflows: run (whole output) and stream_run (events as they happen)."""

    provider: ClassVar[str] = "coze_workflow"

    def __init__(
        self,
        name: str,
        clients: CozeClients | None,
        *,
        default_workflow_id: str = "",
        description: str = "",
        missing_key_reason: str = "COZE_API_TOKEN is not set",
        inputs: tuple[ParameterSpec, ...] = (),
    ) -> None:
        WorkflowService.__init__(
            self,
            name,
            description
            or "Coze workflows. parameters are the workflow's inputs; workflow_id defaults to "
            + (default_workflow_id or "COZE_DEFAULT_WORKFLOW_ID")
            + "; bot_id / app_id for workflows that need them.",
            inputs,
        )
        _CozeClientUser.__init__(self, clients, missing_key_reason)
        self._default_workflow_id = default_workflow_id

    async def run_workflow(self, request: WorkflowInput) -> WorkflowResult:
        clients = self._require_clients()
        body = _workflow_body(self._workflow_id(request), request)
        # Sent and read here, not through cozepy's workflows.runs.create: its WorkflowRunResult
        # has no field for the interrupt_data of a workflow that stopped at a question node.
        async with upstream_call() as call:
            with _map_coze_errors(call):
                response = await clients.http.send(_post(clients, "/v1/workflow/run", body))
                payload = _workflow_run_payload(response)
        return WorkflowResult(
            output=_text(payload.get("data")),
            execute_id=_text(payload.get("execute_id")),
            debug_url=_text(payload.get("debug_url")),
            usage=_usage_of(payload.get("usage")),
            interrupt=_interrupt(payload.get("interrupt_data"), call),
        )

    async def stream_workflow(self, request: WorkflowInput) -> AsyncGenerator[WorkflowNodeEvent, None]:
        clients = self._require_clients()
        body = _workflow_body(self._workflow_id(request), request)
        async with contextlib.aclosing(_workflow_events(clients, "/v1/workflow/stream_run", body)) as events:
            async for event in events:
                yield event

    async def resume_workflow(self, request: WorkflowResume) -> AsyncGenerator[WorkflowNodeEvent, None]:
        clients = self._require_clients()
        # event_id and resume_data were checked on the way in (server/convert.py).
        # Exactly the four keys Coze documents (and cozepy sends) for stream_resume.
        body: dict[str, Any] = {
            "workflow_id": self._workflow_id(request),
            "event_id": request.event_id,
            "resume_data": request.resume_data,
            "interrupt_type": request.interrupt_type,
        }
        async with contextlib.aclosing(_workflow_events(clients, "/v1/workflow/stream_resume", body)) as events:
            async for event in events:
                yield event

    def _workflow_id(self, request: WorkflowInput | WorkflowResume) -> str:
        workflow_id = request.workflow_id or self._default_workflow_id
        if not workflow_id:
            raise InvalidRequest("workflow_id", "is required (no COZE_DEFAULT_WORKFLOW_ID is configured)")
        return workflow_id


def _workflow_body(workflow_id: str, request: WorkflowInput) -> dict[str, Any]:
    """The body of /v1/workflow/run and /v1/workflow/stream_run (bot_id and app_id only when set)."""
    body: dict[str, Any] = {"workflow_id": workflow_id, "parameters": dict(request.parameters)}
    if request.bot_id:
        body["bot_id"] = request.bot_id
    if request.app_id:
        body["app_id"] = request.app_id
    return body


def _post(clients: CozeClients, path: str, body: dict[str, Any]) -> httpx.Request:
    return clients.http.build_request(
        "POST", f"{clients.base_url}{path}", json=body, headers={"Authorization": f"Bearer {clients.token}"}
    )


async def _workflow_events(
    clients: CozeClients, path: str, body: dict[str, Any]
) -> AsyncGenerator[WorkflowNodeEvent, None]:
    """POST a workflow stream request (stream_run or stream_resume) and yield its events until it ends.

    A run ends with ``Done``, or with an ``Interrupt``: Coze's own examples end the stream
    right after it (cozepy's fixture sends a ``Done`` after it too), and the run then waits
    for ResumeWorkflow. Anything else that ends the body is a cut.
    """
    async with upstream_call() as call:
        with _map_coze_errors(call):
            response = await clients.http.send(_post(clients, path, body), stream=True)
            await _raise_for_json_error(response)
            async with contextlib.aclosing(iter_sse(body_chunks(response))) as events:
                async for sse in events:
                    if sse.event == "Message":
                        yield _workflow_message(sse, call)
                    elif sse.event == "Interrupt":
                        yield _workflow_interrupt(sse, call)
                        # The interrupt is the run's last word until it is resumed; a Done may follow.
                        await _drain(events)
                        return
                    elif sse.event == "Error":
                        raise _workflow_error(sse, call)
                    elif sse.event == "Done":
                        return
                    # PING heartbeats and unknown events carry no output.
            raise UpstreamUnavailable(
                "Coze workflow stream ended before its Done event",
                provider=PROVIDER,
                log_id=call.header(LOG_ID_HEADER),
            )


def _workflow_run_payload(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a /v1/workflow/run answer; raises the typed error for an error answer."""
    payload = _json_object(response.content)
    if payload is None or payload.get("code"):
        # The answer of a unary run comes after the run: only a refusal for its rate proves nothing ran.
        raise _error_answer(response, payload, instead_of="a workflow result", unprocessed=_is_rate_limit)
    return payload


# --- chat cancel ------------------------------------------------------------------------------


async def _create_once_conversation_is_free(
    clients: CozeClients, conversation_id: str, create: Callable[[], Awaitable[None]]
) -> None:
    """Create the chat, waiting once for this gateway's own previous turn of the conversation.

    Coze answers 4016 while the conversation's previous chat runs. When that chat is this
    gateway's own and is ending (its caller just left, its cancel is on the way), the new turn
    waits for it (at most _CANCEL_SECONDS) and is sent once more: safe, since a 4016 answer
    means Coze started nothing. Otherwise the 4016 stands (ABORTED for the caller).
    """
    try:
        await create()
    except cozepy.CozeAPIError as error:
        if _code_number(error.code) != _CONVERSATION_BUSY_CODE or not conversation_id:
            raise
        if not await clients.wait_for_turn(conversation_id, _CANCEL_SECONDS):
            raise
        await create()


class _CancelUnlessEnded:
    """Cancels a Coze chat upstream when the call ends before Coze ended the chat, for any reason.

    The caller cancelled or its deadline passed (a CancelledError), the stream was closed
    early (GeneratorExit), the connection broke, a timeout fired, the gateway failed: Coze
    keeps working on a created chat, and billing it, until it is asked to cancel it, and the
    conversation stays busy (4016) meanwhile. A chat that completed, wants tool outputs or
    failed has nothing to cancel. The cancel runs in the background, so the caller's
    cancellation is neither delayed nor swallowed; the conversation's turn stays open until
    it lands (``CozeClients.open_turn``).
    """

    __slots__ = ("_clients", "_conversation_id", "_ids", "_turn", "ended")

    def __init__(self, clients: CozeClients, conversation_id: str) -> None:
        self._clients = clients
        self._conversation_id = conversation_id  # the caller's; "" for a new conversation
        self._turn: asyncio.Event | None = None
        self._ids: tuple[str, str] | None = None  # (conversation_id, chat_id), known from chat.created
        self.ended = False

    def turn_opened(self) -> None:
        """Coze accepted the chat: it runs in the caller's conversation until it ends."""
        if self._conversation_id:
            self._turn = self._clients.open_turn(self._conversation_id)

    def started(self, conversation_id: str, chat_id: str) -> None:
        """Remember the chat's ids (from conversation.chat.created)."""
        if conversation_id and chat_id:
            self._ids = (conversation_id, chat_id)

    def __enter__(self) -> _CancelUnlessEnded:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        turn = self._turn
        if kind is None or self._ids is None or self.ended:
            if turn is not None:
                self._clients.close_turn(self._conversation_id, turn)
            return
        conversation_id, chat_id = self._ids
        try:
            task = self._clients.run_in_background(_cancel_chat(self._clients, conversation_id, chat_id))
        except RuntimeError:
            # No running loop (a generator finalised at interpreter exit): nothing can be sent.
            _LOGGER.warning("could not cancel Coze chat %s: no event loop is running", chat_id)
            return
        if turn is not None:
            task.add_done_callback(lambda _: self._clients.close_turn(self._conversation_id, turn))


async def _cancel_chat(clients: CozeClients, conversation_id: str, chat_id: str) -> None:
    """Ask Coze to stop a chat that will not complete; log, never raise, when that fails."""
    try:
        async with upstream_call(), asyncio.timeout(_CANCEL_SECONDS):
            await clients.coze.chat.cancel(conversation_id=conversation_id, chat_id=chat_id)
    except cozepy.CozeAPIError as error:
        if _code_number(error.code) == _NOT_CANCELLABLE_CODE:
            # Coze had ended the chat already (e.g. after an error event): nothing was left running.
            _LOGGER.debug("Coze chat %s had ended before its cancel", chat_id)
        else:
            _LOGGER.warning("could not cancel unfinished Coze chat %s: %s", chat_id, _describe(error))
    except Exception as error:  # nobody awaits this task: the log is the only place to report it
        _LOGGER.warning("could not cancel unfinished Coze chat %s: %s", chat_id, _describe(error))
    else:
        _LOGGER.debug("cancelled unfinished Coze chat %s", chat_id)


def _describe(error: Exception) -> str:
    # The class, and Coze's code and log id when there are any: never a body or message text.
    if isinstance(error, cozepy.CozeAPIError):
        return f"{type(error).__name__} code={error.code} logid={error.logid}"
    return type(error).__name__


# --- requests ---------------------------------------------------------------------------------


def _coze_messages(messages: tuple[Message, ...]) -> list[cozepy.Message]:
    converted = []
    for index, message in enumerate(messages):
        if message.role == "user":
            converted.append(cozepy.Message.build_user_question_text(message.content))
        elif message.role == "assistant":
            converted.append(cozepy.Message.build_assistant_answer(message.content))
        else:
            raise InvalidRequest(
                f"messages[{index}].role",
                f"Coze does not take role {quote_input(message.role)} (only 'user' and 'assistant'; "
                "put instructions in the bot's persona)",
            )
    if messages[-1].role != "user":
        raise InvalidRequest(f"messages[{len(messages) - 1}].role", "the last message must be 'user'")
    return converted


# --- responses --------------------------------------------------------------------------------


def _usage(usage: cozepy.ChatUsage | None) -> Usage | None:
    if usage is None:
        return None
    return Usage(
        input_tokens=usage.input_count or 0,
        output_tokens=usage.output_count or 0,
        total_tokens=usage.token_count or 0,
    )


def _chat_finished(
    chat: cozepy.Chat, reason: FinishReason, follow_ups: list[str], tool_calls: tuple[ToolCall, ...] = ()
) -> ChatFinished:
    return ChatFinished(
        finish_reason=reason,
        usage=_usage(chat.usage),
        conversation_id=chat.conversation_id,
        chat_id=chat.id,
        tool_calls=tool_calls,
        follow_ups=tuple(follow_ups),
    )


def _tool_calls(chat: cozepy.Chat) -> tuple[ToolCall, ...]:
    """The tool calls of a requires_action chat (Coze's submit_tool_outputs action)."""
    action = chat.required_action
    submit = action.submit_tool_outputs if action is not None else None
    if submit is None:
        return ()
    return tuple(
        ToolCall(
            id=call.id,
            # A str enum; .value is the wire string, also for values cozepy does not know.
            type=str(call.type.value),
            function_name=call.function.name if call.function is not None else "",
            arguments=call.function.arguments if call.function is not None else "",
        )
        for call in submit.tool_calls
    )


async def _drain(events: AsyncIterator[Any]) -> None:
    """Read to the end of the body (done, then EOF) so the connection can be reused."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in events:
                pass


def _workflow_message(sse: ServerSentEvent, call: UpstreamCall) -> WorkflowNodeEvent:
    data = _event_json(sse, call)
    usage = data.get("usage")
    return WorkflowNodeEvent(
        content=str(data.get("content", "")),
        node_title=str(data.get("node_title", "")),
        node_seq_id=str(data.get("node_seq_id", "")),
        node_is_finish=bool(data.get("node_is_finish", False)),
        node_id=str(data.get("node_id", "")),
        usage=_usage_of(usage),
    )


def _workflow_interrupt(sse: ServerSentEvent, call: UpstreamCall) -> WorkflowNodeEvent:
    data = _event_json(sse, call)
    interrupt = _interrupt(data.get("interrupt_data"), call)
    if interrupt is None:
        raise UpstreamUnavailable(
            "Coze sent an Interrupt event without interrupt_data", provider=PROVIDER, log_id=call.header(LOG_ID_HEADER)
        )
    return WorkflowNodeEvent(node_title=str(data.get("node_title", "")), interrupt=interrupt)


def _interrupt(interrupt_data: object, call: UpstreamCall) -> WorkflowInterrupt | None:
    """An ``interrupt_data`` object (of an Interrupt event or a /v1/workflow/run answer); None when absent."""
    if not isinstance(interrupt_data, dict) or not interrupt_data.get("event_id"):
        return None
    try:
        interrupt_type = int(interrupt_data.get("type") or 0)
    except (TypeError, ValueError):
        raise UpstreamUnavailable(
            "Coze sent an interrupt whose type is not a number", provider=PROVIDER, log_id=call.header(LOG_ID_HEADER)
        ) from None
    return WorkflowInterrupt(
        event_id=str(interrupt_data["event_id"]),
        interrupt_type=interrupt_type,
        data=_text(interrupt_data.get("data")),
    )


def _text(value: object) -> str:
    """A string field of a Coze answer; "" when absent or null."""
    return value if isinstance(value, str) else "" if value is None else str(value)


def _usage_of(usage: object) -> Usage | None:
    """A usage object of a Coze answer ({input_count, output_count, token_count}); None when absent."""
    if not isinstance(usage, dict):
        return None
    return _usage(cozepy.ChatUsage.model_validate(usage))


def _workflow_error(sse: ServerSentEvent, call: UpstreamCall) -> UpstreamError:
    data = _event_json(sse, call)
    return coze_error(
        data.get("error_code"),
        f"Coze workflow failed: {data.get('error_message', '')}",
        log_id=call.header(LOG_ID_HEADER),
    )


def _chat_failed(data: Mapping[str, Any], call: UpstreamCall) -> UpstreamError:
    """The error of a conversation.chat.failed event, in either documented shape.

    Real traffic sends a Chat object with ``last_error {code, msg}``; Coze's API reference
    shows ``{"code", "msg"}`` itself as the event's data.
    """
    last_error = data.get("last_error")
    details: Mapping[str, Any] = last_error if isinstance(last_error, dict) and last_error.get("code") else data
    return coze_error(
        details.get("code"), f"Coze chat failed: {details.get('msg', '')}", log_id=call.header(LOG_ID_HEADER)
    )


def _chat(sse: ServerSentEvent, call: UpstreamCall) -> cozepy.Chat:
    # One final chat event per answer: a pydantic model for it costs little.
    return cozepy.Chat.model_validate(_event_json(sse, call))


def _event_json(sse: ServerSentEvent, call: UpstreamCall) -> dict[str, Any]:
    """An event's data as a JSON object; anything else means the stream is broken."""
    try:
        data = _EVENT_JSON.decode(sse.data)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise UpstreamUnavailable(
            f"Coze sent a malformed {sse.event} event", provider=PROVIDER, log_id=call.header(LOG_ID_HEADER)
        )
    return data


def _stream_response(call: UpstreamCall) -> httpx.Response:
    """The response cozepy just opened, recorded by the shared client's response hook."""
    if not call.responses:
        raise RuntimeError("the Coze response was not recorded: its client must use tracked_client_options()")
    return call.responses[-1]


async def _raise_for_json_error(response: httpx.Response) -> None:
    """Coze answers a failed stream request with a JSON body (often HTTP 200) instead of SSE."""
    if "event-stream" in response.headers.get("content-type", ""):
        return
    # An error answer where the stream was due: Coze did not start on the request.
    payload = _json_object(await response.aread())
    raise _error_answer(response, payload, instead_of="an event stream", unprocessed=lambda code: True)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _error_answer(
    response: httpx.Response,
    payload: dict[str, Any] | None,
    *,
    instead_of: str,
    unprocessed: Callable[[object], bool],
) -> UpstreamError:
    """The typed error for an answer that is an error: Coze's code, or the HTTP status when the body has none.

    ``unprocessed(code)`` says whether that answer proves Coze started nothing.
    """
    if payload is not None and payload.get("code"):
        code: object = payload.get("code")
        message = f"Coze: {payload.get('msg', '')}"
    else:
        code = response.status_code
        message = f"Coze answered HTTP {response.status_code} without {instead_of}"
    return coze_error(
        code,
        message,
        log_id=response.headers.get(LOG_ID_HEADER, ""),
        retry_after=response.headers.get("retry-after"),
        unprocessed=unprocessed(code),
    )


# --- errors -----------------------------------------------------------------------------------


def coze_error(
    code: object, message: str, *, log_id: str = "", retry_after: str | None = None, unprocessed: bool = False
) -> UpstreamError:
    """The typed error for a Coze business code (or the HTTP status in its place).

    ``unprocessed`` says that Coze answered with this error instead of starting the work
    (see ``UpstreamError.unprocessed``).
    """
    number = _code_number(code)
    facts: dict[str, Any] = {
        "provider": PROVIDER,
        "upstream_code": str(code or ""),
        "log_id": log_id,
        "unprocessed": unprocessed,
    }
    if number in _AUTH_CODES:
        return UpstreamAuthError(
            f"Coze rejected the gateway's credentials: {message}. Check COZE_API_TOKEN, "
            "and that COZE_API_BASE is the token's region (api.coze.cn or api.coze.com)",
            **facts,
        )
    if number in _NOT_FOUND_CODES:
        return UpstreamNotFound(message, **facts)
    if number in _RATE_LIMIT_CODES:
        return UpstreamRateLimited(message, retry_after_seconds=_seconds(retry_after), **facts)
    if number in _BAD_REQUEST_CODES:
        return UpstreamInvalidRequest(message, **facts)
    if number == _CONVERSATION_BUSY_CODE:
        return UpstreamConversationBusy(message, retry_after_seconds=_seconds(retry_after), **facts)
    if number in _REJECTED_CODES:
        return UpstreamRejected(message, **facts)
    if 500 <= number < 600 or 5000 <= number < 6000:
        return UpstreamUnavailable(message, **facts)
    return UpstreamError(message, **facts)


def _code_number(code: object) -> int:
    try:
        return int(str(code))
    except ValueError:
        return 0


def _is_rate_limit(code: object) -> bool:
    """Whether a Coze code (or HTTP status) says the request was refused for its rate, before any work."""
    return _code_number(code) in _RATE_LIMIT_CODES


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@contextlib.contextmanager
def _map_coze_errors(call: UpstreamCall) -> Iterator[None]:
    """Translate cozepy's and httpx's exceptions into the gateway's error tree."""
    try:
        yield
    except cozepy.CozeAPIError as error:
        # cozepy raises it for an error answer where the chat stream was due: Coze did not start.
        response = call.responses[-1] if call.responses else None
        retry_after = response.headers.get("retry-after") if response is not None else None
        raise coze_error(
            error.code,
            f"Coze: {error.msg}",
            log_id=error.logid or call.header(LOG_ID_HEADER),
            retry_after=retry_after,
            unprocessed=True,
        ) from error
    except pydantic.ValidationError as error:
        raise UpstreamUnavailable(
            "Coze sent an event that does not match its schema",
            provider=PROVIDER,
            log_id=call.header(LOG_ID_HEADER),
        ) from error
    except (httpx.ConnectTimeout, httpx.ConnectError) as error:
        raise connection_failed(PROVIDER, "Coze", error, timed_out=isinstance(error, httpx.ConnectTimeout)) from error
    except httpx.DecodingError as error:
        # A Content-Encoding the body does not match: the upstream (or a proxy) sent garbage.
        raise UpstreamUnavailable(
            f"Coze sent a body that does not decode ({type(error).__name__})",
            provider=PROVIDER,
            log_id=call.header(LOG_ID_HEADER),
        ) from error
    except httpx.TimeoutException as error:
        raise UpstreamTimeout(
            f"Coze did not answer in time ({type(error).__name__})",
            provider=PROVIDER,
            log_id=call.header(LOG_ID_HEADER),
        ) from error
    except httpx.TransportError as error:
        raise UpstreamUnavailable(
            f"Coze broke the connection ({type(error).__name__})",
            provider=PROVIDER,
            log_id=call.header(LOG_ID_HEADER),
        ) from error


def _error_event(raw: str, call: UpstreamCall) -> UpstreamError:
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    details: Mapping[str, Any] = payload if isinstance(payload, dict) else {}
    return coze_error(
        details.get("code"),
        f"Coze error event: {details.get('msg', '') or raw}",
        log_id=call.header(LOG_ID_HEADER),
    )
