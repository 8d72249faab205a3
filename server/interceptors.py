"""Server interceptors: concerns that apply to every RPC, kept out of the servicer.

``ErrorStatusInterceptor`` turns any exception a handler raises into a defined
status (see ``server/errors.py``), and a request whose bytes are no valid message
into INVALID_ARGUMENT (grpc would answer UNKNOWN and log a traceback). It also
knows the calls in flight, so that shutdown can end them itself (``end_calls``):
grpc's own cancellation at the end of the grace period logs two tracebacks per call. Later
concerns (metrics, tracing, caller keys) go here as further interceptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeAlias, cast

import grpc

from providers.errors import InvalidRequest, ShuttingDown
from server.errors import Scrubber, end_with

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class ErrorStatusInterceptor(grpc.aio.ServerInterceptor):
    """Ends a call whose handler raised with the status for that exception."""

    def __init__(self, scrub: Scrubber | None = None) -> None:
        self._scrub = scrub or Scrubber()
        self._calls = _CallsInFlight()
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
        wrapped = _wrap(method, handler, self._scrub, self._calls)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def end_calls(self) -> int:
        """End every call in flight with UNAVAILABLE (ShuttingDown); returns how many there were."""
        return self._calls.end_all()


def _wrap(method: str, handler: _Handler, scrub: Scrubber, calls: _CallsInFlight) -> _Handler:
    deserializer = _tolerant(handler.request_deserializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary(method, handler.unary_unary, scrub, calls),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        # A streaming handler either yields (async generator) or writes with
        # context.write and returns (coroutine, as the health service's Watch does).
        behavior = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            (
                _server_stream(method, behavior, scrub, calls)
                if inspect.isasyncgenfunction(behavior)
                else _unary(method, cast(Any, behavior), scrub, calls)
            ),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # client- and bidi-streaming handlers (reflection) map their own errors


class _CallsInFlight:
    """The handler tasks of the calls in flight; ``end_all`` cancels them for shutdown.

    A handler cancelled this way (and by nothing else) answers with the ShuttingDown status
    instead of letting the CancelledError reach grpc, which would log it as an error.
    """

    __slots__ = ("_ended", "_tasks")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ended: set[asyncio.Task[Any]] = set()

    @contextlib.contextmanager
    def track(self) -> Iterator[asyncio.Task[Any] | None]:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield task
        finally:
            if task is not None:
                self._tasks.discard(task)
                self._ended.discard(task)

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


def _check_decoded(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise request.invalid()


def _unary(
    method: str, behavior: Callable[[Any, Any], Awaitable[Any]], scrub: Scrubber, calls: _CallsInFlight
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        with calls.track() as task:
            try:
                _check_decoded(request)
                return await behavior(request, context)
            except (Exception, asyncio.CancelledError) as error:
                _fail(context, method, error, calls, task, scrub)
                return None

    return unary


def _server_stream(
    method: str, behavior: Callable[[Any, Any], AsyncIterator[Any]], scrub: Scrubber, calls: _CallsInFlight
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    async def server_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if isinstance(request, _Undecodable):
            end_with(context, method, request.invalid(), scrub)
            return
        with calls.track() as task:
            responses = behavior(request, context)
            try:
                async for response in responses:
                    yield response
            except (Exception, asyncio.CancelledError) as error:
                _fail(context, method, error, calls, task, scrub)
            finally:
                await responses.aclose()  # type: ignore[attr-defined]

    return server_stream


def _fail(
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    error: BaseException,
    calls: _CallsInFlight,
    task: asyncio.Task[Any] | None,
    scrub: Scrubber,
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
    end_with(context, method, error, scrub)
