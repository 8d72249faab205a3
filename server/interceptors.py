"""Server interceptors: concerns that apply to every RPC, kept out of the servicer.

``CallInterceptor`` owns each call from its first byte to its status:

- **Admission.** At most ``max_calls`` calls of the gateway's own service run in the process at
  once; one more is refused at once with RESOURCE_EXHAUSTED and RetryInfo (``GatewayOverloaded``).
  Without it a burst waits in grpc's queue of unhandled calls, which cancels calls past a few
  thousand: CANCELLED, which callers neither asked for nor retry well.
- **Arrival.** A request must arrive whole within ``request_arrival_seconds`` (DEADLINE_EXCEEDED,
  ``RequestIncomplete``, otherwise). grpc itself waits for a request without end when the caller
  set no deadline, so half-sent requests could pile up. To bound it, the gateway's handlers are
  served request-streaming: grpc then starts them at once and they read the request themselves (a
  unary request is one message on the wire either way).
- **Statuses.** Any exception a handler raises ends the call with its status (``server/errors.py``),
  and a request whose bytes are no valid message with INVALID_ARGUMENT (grpc would answer UNKNOWN
  and log a traceback). The status is set, never raised with ``context.abort()``: grpc keeps that
  exception on the call, with a traceback that holds the request.
- **Shutdown.** ``end_calls`` ends the calls still in flight at the end of the grace period:
  grpc's own cancellation then logs two tracebacks per call.

- **Callers.** With caller keys configured, a call without a valid key is refused before its
  request is read, and one to a service its key may not call, or past one of its key's limits,
  before any upstream work (``server/admission.py``). Every call's usage (``server/usage.py``:
  reported, or estimated for a cancelled, cut or failed call) settles its key's reservation.

Metrics, the access log and span attributes are ``CallObserver``s, told of each call's
``CallRecord`` (``server/metrics.py``, ``server/access_log.py``, ``server/tracing.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, cast

import grpc

from providers.errors import GatewayOverloaded, InvalidRequest, RequestIncomplete, ShuttingDown, UpstreamError
from server.admission import CallerAdmission
from server.callers import CallerKey
from server.errors import Scrubber, end_with
from server.limits import Reservation
from server.usage import UsageMeter, UsageSource

_LOGGER = logging.getLogger(__name__)
_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_Requests: TypeAlias = "AsyncIterator[Any]"


@dataclass(frozen=True, slots=True)
class CallLimits:
    """What every call is held to; None means no limit."""

    #: Calls of the admitted service in flight in this process, all methods together.
    max_calls: int | None = None
    #: How long a call's request may take to arrive whole.
    request_arrival_seconds: float | None = None
    #: The methods the admission limit counts (health checks and reflection stay open).
    admitted_prefix: str = "/aiplatform.v1.AIPlatformService/"


#: The metadata key of a call's request id: the caller's when it sent one, returned to it in the
#: response's initial metadata either way.
REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID_CHARS = 64


@dataclass(slots=True)
class CallRecord:
    """What is known of one call when it ends: the facts metrics and the access log report.

    Never the call's contents: no message text, no parameter values, no credentials.
    """

    #: The full method, ``/aiplatform.v1.AIPlatformService/StreamChat``.
    method: str
    #: ``unary``, ``server_stream`` or ``bidi_stream`` (grpc-ecosystem's ``grpc_type``).
    kind: str
    request_id: str
    started: float = field(default_factory=time.monotonic)
    #: The name of the caller's key ("" when the gateway runs without keys, or none was valid).
    caller: str = ""
    #: The service the request named, once it was found ("" otherwise: a caller's unknown name
    #: is never a metric label), and its provider.
    service: str = ""
    provider: str = ""
    #: When the request had arrived whole and the handler began, and when its first response went out.
    handling_started: float | None = None
    first_response: float | None = None
    messages_sent: int = 0
    #: The call's usage once it ended: the upstream's, or estimated (``usage_source`` says which).
    input_tokens: int = 0
    output_tokens: int = 0
    usage_source: UsageSource = UsageSource.UNSPECIFIED
    code: grpc.StatusCode = grpc.StatusCode.OK
    #: The ErrorInfo reason of a failure, and whether the upstream caused it.
    reason: str = ""
    upstream_failed: bool = False
    #: The upstream provably did no work for the failed call (UpstreamError.unprocessed).
    upstream_unprocessed: bool = False
    upstream_log_id: str = ""
    ended: float = 0.0
    usage: UsageMeter = field(init=False)

    def __post_init__(self) -> None:
        self.usage = UsageMeter(self.method)

    @property
    def duration(self) -> float:
        return self.ended - self.started

    @property
    def reached_upstream(self) -> bool:
        """Whether the call got as far as its upstream (it ended OK, or the upstream failed)."""
        return bool(self.service) and (self.code == grpc.StatusCode.OK or self.upstream_failed)

    @property
    def upstream_may_have_worked(self) -> bool:
        """Whether the upstream may have done (and billed) work: the call reached it, or was
        cancelled or ended while it may have been under way."""
        return bool(self.service) and (
            (self.reached_upstream and not self.upstream_unprocessed)
            or self.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)
            or self.reason == ShuttingDown.reason
        )


class CallObserver(Protocol):
    """Told of every call; must not raise (metrics, the access log)."""

    def call_started(self, call: CallRecord) -> None:
        """The request arrived whole; ``call.service`` is set if it names one."""

    def call_ended(self, call: CallRecord) -> None:
        """The call ended; its record is complete."""


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Admits, bounds, ends and records every call; see the module docstring."""

    def __init__(
        self,
        scrub: Scrubber | None = None,
        limits: CallLimits | None = None,
        *,
        provider_of: Callable[[str], str | None] = lambda _name: None,
        observers: Sequence[CallObserver] = (),
        admission: CallerAdmission | None = None,
    ) -> None:
        self._limits = limits or CallLimits()
        self._calls = _CallsInFlight(scrub or Scrubber(), self._limits, provider_of, tuple(observers), admission)
        # Wrapped handlers by method: grpc hands out the same handler object for every call of
        # a method, so wrapping it once saves rebuilding closures and handlers on each call.
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        counted = method.startswith(self._limits.admitted_prefix)
        wrapped = _wrap(method, handler, self._calls, counted)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def end_calls(self) -> int:
        """End every call in flight with UNAVAILABLE (ShuttingDown); returns how many there were."""
        return self._calls.end_all()

    def take_peak(self) -> tuple[int, int]:
        """The gateway's calls in flight now and their peak since the last take (server/memory.py)."""
        return self._calls.take_peak()


def _wrap(method: str, handler: _Handler, calls: _CallsInFlight, counted: bool) -> _Handler:
    deserializer = _tolerant(handler.request_deserializer)
    if handler.stream_stream is not None:  # reflection's: it reads its requests itself
        return grpc.stream_stream_rpc_method_handler(
            _bidirectional_stream(method, cast(Any, handler.stream_stream), calls),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.request_streaming:
        return handler  # no client-streaming method is served
    if handler.unary_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary(method, handler.unary_unary, calls, counted, "unary"),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    # A streaming handler either yields (async generator) or writes with
    # context.write and returns (coroutine, as the health service's Watch does).
    behavior = handler.unary_stream
    return grpc.stream_stream_rpc_method_handler(
        (
            _server_stream(method, behavior, calls, counted)
            if inspect.isasyncgenfunction(behavior)
            else _unary(method, cast(Any, behavior), calls, counted, "server_stream")
        ),
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


class _CallsInFlight:
    """The handler tasks of the calls in flight: admission counts them, shutdown ends them.

    A handler cancelled by ``end_all`` (and by nothing else) answers with the ShuttingDown status
    instead of letting the CancelledError reach grpc, which would log it as an error.
    """

    __slots__ = (
        "_admission",
        "_counted",
        "_ended",
        "_limits",
        "_observers",
        "_peak",
        "_provider_of",
        "_refused_before",
        "_tasks",
        "scrub",
    )

    def __init__(
        self,
        scrub: Scrubber,
        limits: CallLimits,
        provider_of: Callable[[str], str | None],
        observers: tuple[CallObserver, ...],
        admission: CallerAdmission | None,
    ) -> None:
        self.scrub = scrub
        self._admission = admission
        self._limits = limits
        self._provider_of = provider_of
        self._observers = observers
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ended: set[asyncio.Task[Any]] = set()
        self._counted = 0
        self._peak = 0
        self._refused_before = False

    @contextlib.contextmanager
    def track(self, counted: bool) -> Iterator[asyncio.Task[Any] | None]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._counted += counted
        if self._counted > self._peak:
            self._peak = self._counted
        try:
            yield task
        finally:
            self._counted -= counted
            if task is not None:
                self._tasks.discard(task)
                self._ended.discard(task)

    async def begin(self, method: str, kind: str, context: grpc.aio.ServicerContext[Any, Any]) -> CallRecord:
        """A new call's record; its request id is sent back at once in the initial metadata."""
        call = CallRecord(method, kind, _request_id(context))
        await context.send_initial_metadata(((REQUEST_ID_KEY, call.request_id),))
        return call

    def admit_and_authenticate(self, call: CallRecord, context: grpc.aio.ServicerContext[Any, Any]) -> CallerKey | None:
        """Admit the call to the process (``admit``), then find its caller by its key when keys are
        configured (Unauthenticated without a valid one)."""
        self.admit()
        if self._admission is None:
            return None
        caller = self._admission.authenticate(context.invocation_metadata())
        if caller is not None:
            call.caller = caller.name
        return caller

    def identify(self, call: CallRecord, request: Any) -> None:
        """Note the service the request names, if there is one by that name, and start the handling clock."""
        call.handling_started = time.monotonic()
        name = getattr(request, "service_name", "")
        if name and (provider := self._provider_of(name)) is not None:
            call.service, call.provider = name, provider
        call.usage.begin(request)
        for observer in self._observers:
            observer.call_started(call)

    async def admit_caller(self, call: CallRecord, caller: CallerKey | None, request: Any) -> Reservation | None:
        """Refuse the call if its caller may not call the service it names or is at a limit; else its reservation."""
        name = getattr(request, "service_name", None)
        if caller is None or self._admission is None or name is None:
            return None
        # A reservation id of the gateway's own: the request id is the caller's to choose, and two
        # calls under one id would hold one concurrency lease in Redis.
        return await self._admission.admit(
            caller, name, call.service, uuid.uuid4().hex, request, call.usage.estimated_input
        )

    def finish(self, call: CallRecord, reservation: Reservation | None = None) -> None:
        call.ended = time.monotonic()
        call.input_tokens, call.output_tokens, call.usage_source = call.usage.final(call.upstream_may_have_worked)
        if reservation is not None and self._admission is not None:
            self._admission.settle(reservation, call.input_tokens + call.output_tokens)
        for observer in self._observers:
            try:
                observer.call_ended(call)
            except Exception:  # an observer's bug must not fail the call, nor hide it
                _LOGGER.exception("observing the call %s failed", call.request_id)

    def take_peak(self) -> tuple[int, int]:
        """The counted calls in flight now and their peak since the last take; the next peak starts now."""
        peak, self._peak = self._peak, self._counted
        return self._counted, peak

    def admit(self) -> None:
        """Refuse (GatewayOverloaded) the call just tracked if it is one more than the process takes."""
        limit = self._limits.max_calls
        if limit is None or self._counted <= limit:
            return
        if not self._refused_before:
            # Once per process: refusals can come by the thousand a second.
            self._refused_before = True
            _LOGGER.warning(
                "the gateway reached its limit of %d calls in flight and refuses more (RESOURCE_EXHAUSTED); "
                "raise AIP_MAX_CALLS_IN_FLIGHT if the host has room, or add replicas (logged once)",
                limit,
            )
        raise GatewayOverloaded(f"the gateway is at its limit of {limit} calls in flight; retry shortly")

    async def first_request(self, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """The call's request message, once it arrived whole (and decoded) in time."""
        seconds = self._limits.request_arrival_seconds
        try:
            # context.read(), not the request iterator grpc passes: its generator, paused at a
            # yield, would hold the request in a reference cycle until a full collection.
            async with asyncio.timeout(seconds):
                request = await context.read()
        except TimeoutError:
            raise RequestIncomplete(
                f"the request did not arrive whole within {seconds:g} s (AIP_REQUEST_ARRIVAL_TIMEOUT_SECONDS); "
                "send it again"
            ) from None
        if request is grpc.aio.EOF:
            raise InvalidRequest("request", "the call ended without sending a request message")
        if isinstance(request, _Undecodable):
            raise request.invalid()
        return request

    def end_all(self) -> int:
        for task in self._tasks:
            self._ended.add(task)
            task.cancel()
        return len(self._tasks)

    def ended_by_shutdown(self, task: asyncio.Task[Any] | None) -> bool:
        """After a CancelledError in ``task``: whether end_all alone cancelled it (then it is taken back)."""
        if task is None or task not in self._ended:
            return False
        return task.uncancel() == 0


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the handler can refuse it properly."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def invalid(self) -> InvalidRequest:
        """The error the caller is answered with."""
        return InvalidRequest("request", f"the bytes are not a valid request message ({type(self.error).__name__})")


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            return _Undecodable(error)

    return deserialize


def _unary(
    method: str, behavior: Callable[[Any, Any], Awaitable[Any]], calls: _CallsInFlight, counted: bool, kind: str
) -> Callable[[_Requests, Any], Awaitable[Any]]:
    async def unary(_requests: _Requests, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with calls.track(counted) as task:
            call = await calls.begin(method, kind, context)
            reservation: Reservation | None = None
            try:
                caller = calls.admit_and_authenticate(call, context) if counted else None
                request = await calls.first_request(context)
                calls.identify(call, request)
                reservation = await calls.admit_caller(call, caller, request)
                response = await behavior(request, context)
                if response is not None:
                    call.usage.observe(response)
                return response
            except (Exception, asyncio.CancelledError) as error:
                _fail(context, method, error, calls, task, call)
                return None
            finally:
                calls.finish(call, reservation)

    return unary


def _server_stream(
    method: str, behavior: Callable[[Any, Any], AsyncIterator[Any]], calls: _CallsInFlight, counted: bool
) -> Callable[[_Requests, Any], AsyncIterator[Any]]:
    async def server_stream(_requests: _Requests, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        with calls.track(counted) as task:
            call = await calls.begin(method, "server_stream", context)
            responses: AsyncIterator[Any] | None = None
            reservation: Reservation | None = None
            try:
                caller = calls.admit_and_authenticate(call, context) if counted else None
                request = await calls.first_request(context)
                calls.identify(call, request)
                reservation = await calls.admit_caller(call, caller, request)
                responses = behavior(request, context)
                usage = call.usage
                async for response in responses:
                    if call.first_response is None:
                        call.first_response = time.monotonic()
                    call.messages_sent += 1
                    usage.observe(response)
                    yield response
            except (Exception, asyncio.CancelledError) as error:
                _fail(context, method, error, calls, task, call)
            finally:
                if responses is not None:
                    await responses.aclose()  # type: ignore[attr-defined]
                calls.finish(call, reservation)

    return server_stream


def _bidirectional_stream(
    method: str, behavior: Callable[[_Requests, Any], AsyncIterator[Any]], calls: _CallsInFlight
) -> Callable[[_Requests, Any], AsyncIterator[Any]]:
    async def bidirectional_stream(
        requests: _Requests, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        with calls.track(False) as task:
            call = await calls.begin(method, "bidi_stream", context)
            call.handling_started = call.started
            responses = behavior(_decoded(requests), context)
            try:
                async for response in responses:
                    call.messages_sent += 1
                    yield response
            except (Exception, asyncio.CancelledError) as error:
                _fail(context, method, error, calls, task, call)
            finally:
                await responses.aclose()  # type: ignore[attr-defined]
                calls.finish(call)

    return bidirectional_stream


async def _decoded(requests: _Requests) -> AsyncIterator[Any]:
    """The messages of a request stream; one whose bytes do not parse ends it with INVALID_ARGUMENT."""
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.invalid()
        yield request


def _fail(
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    error: BaseException,
    calls: _CallsInFlight,
    task: asyncio.Task[Any] | None,
    call: CallRecord,
) -> None:
    """Set the call's status for ``error``; the handler then returns, and grpc sends the status.

    An abort already under way, or a cancellation the gateway did not cause (the caller left,
    its deadline passed, grpc stopped), goes on as it is.
    """
    if isinstance(error, grpc.aio.AbortError):
        call.code = grpc.StatusCode.UNKNOWN
        raise error
    if isinstance(error, asyncio.CancelledError):
        if not calls.ended_by_shutdown(task):
            call.code = (
                grpc.StatusCode.DEADLINE_EXCEEDED if context.time_remaining() == 0 else grpc.StatusCode.CANCELLED
            )
            raise error
        error = ShuttingDown("the gateway is shutting down and ended the call at the end of its grace period; retry it")
    assert isinstance(error, Exception)
    status = end_with(context, method, error, calls.scrub)
    call.code, call.reason = status.code, getattr(error, "reason", "INTERNAL")
    if isinstance(error, UpstreamError):
        call.upstream_failed, call.upstream_log_id = True, calls.scrub(error.log_id, 128)
        call.upstream_unprocessed = error.unprocessed


def _request_id(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's x-request-id when it is a sane one (short, printable), else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str):
            if 0 < len(value) <= _MAX_REQUEST_ID_CHARS and value.isprintable():
                return value
            break
    return uuid.uuid4().hex
