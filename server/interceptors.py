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

Later concerns (metrics, tracing, caller keys) go here as further interceptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import grpc

from providers.errors import GatewayOverloaded, InvalidRequest, RequestIncomplete, ShuttingDown
from server.errors import Scrubber, end_with

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


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Admits, bounds and ends every call; see the module docstring."""

    def __init__(self, scrub: Scrubber | None = None, limits: CallLimits | None = None) -> None:
        self._limits = limits or CallLimits()
        self._calls = _CallsInFlight(scrub or Scrubber(), self._limits)
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
            _unary(method, handler.unary_unary, calls, counted),
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
            else _unary(method, cast(Any, behavior), calls, counted)
        ),
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


class _CallsInFlight:
    """The handler tasks of the calls in flight: admission counts them, shutdown ends them.

    A handler cancelled by ``end_all`` (and by nothing else) answers with the ShuttingDown status
    instead of letting the CancelledError reach grpc, which would log it as an error.
    """

    __slots__ = ("_counted", "_ended", "_limits", "_peak", "_refused_before", "_tasks", "scrub")

    def __init__(self, scrub: Scrubber, limits: CallLimits) -> None:
        self.scrub = scrub
        self._limits = limits
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
    method: str, behavior: Callable[[Any, Any], Awaitable[Any]], calls: _CallsInFlight, counted: bool
) -> Callable[[_Requests, Any], Awaitable[Any]]:
    async def unary(_requests: _Requests, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with calls.track(counted) as task:
            try:
                if counted:
                    calls.admit()
                request = await calls.first_request(context)
                return await behavior(request, context)
            except (Exception, asyncio.CancelledError) as error:
                _fail(context, method, error, calls, task)
                return None

    return unary


def _server_stream(
    method: str, behavior: Callable[[Any, Any], AsyncIterator[Any]], calls: _CallsInFlight, counted: bool
) -> Callable[[_Requests, Any], AsyncIterator[Any]]:
    async def server_stream(_requests: _Requests, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        with calls.track(counted) as task:
            responses: AsyncIterator[Any] | None = None
            try:
                if counted:
                    calls.admit()
                responses = behavior(await calls.first_request(context), context)
                async for response in responses:
                    yield response
            except (Exception, asyncio.CancelledError) as error:
                _fail(context, method, error, calls, task)
            finally:
                if responses is not None:
                    await responses.aclose()  # type: ignore[attr-defined]

    return server_stream


def _bidirectional_stream(
    method: str, behavior: Callable[[_Requests, Any], AsyncIterator[Any]], calls: _CallsInFlight
) -> Callable[[_Requests, Any], AsyncIterator[Any]]:
    async def bidirectional_stream(
        requests: _Requests, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        with calls.track(False) as task:
            responses = behavior(_decoded(requests), context)
            try:
                async for response in responses:
                    yield response
            except (Exception, asyncio.CancelledError) as error:
                _fail(context, method, error, calls, task)
            finally:
                await responses.aclose()  # type: ignore[attr-defined]

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
) -> None:
    """Set the call's status for ``error``; the handler then returns, and grpc sends the status.

    An abort already under way, or a cancellation the gateway did not cause (the caller left,
    grpc stopped), goes on as it is.
    """
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if isinstance(error, asyncio.CancelledError):
        if not calls.ended_by_shutdown(task):
            raise error
        error = ShuttingDown("the gateway is shutting down and ended the call at the end of its grace period; retry it")
    assert isinstance(error, Exception)
    end_with(context, method, error, calls.scrub)
