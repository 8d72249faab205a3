"""Call guards every service gets, whatever its provider: timeouts, safe retries, a concurrency cap.

A guard wraps one call to a service:

- **Timeouts.** Time to the first event (``first_token_timeout_seconds``), the
  longest silence between two events (``idle_timeout_seconds``), and the whole
  call (``total_timeout_seconds``). A timeout cancels the provider's pending
  read, which closes its upstream request, and ends the call with UpstreamTimeout.
- **Retries, only where the upstream did no work.** A failure is retried only when
  it is transient *and* the upstream provably did not start on the request
  (``UpstreamError.unprocessed``: a connect failure, or an error answer such as a
  502 or a 429 with a short Retry-After where a stream was due), with exponential
  backoff and full jitter, within the caller's deadline and the attempt limit. A
  request the upstream started (a Coze chat it created, a workflow that may have
  side effects, a stream that broke) is never sent again: that would run, and
  bill, the work twice, and the caller could get text twice.
- **Load shedding.** At most ``max_concurrent_calls`` calls of a service run at once;
  one more is refused at once with Overloaded instead of queueing without bound,
  and the first refusal of a service is logged once, so an operator sees the cap.

The limits are the service's ``ServiceLimits`` (``providers/limits.py``), under their settings' names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from providers.errors import Overloaded, UpstreamError, UpstreamRateLimited, UpstreamTimeout
from providers.limits import ServiceLimits

_T = TypeVar("_T")
_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How the guard spaces retries: not a setting, but tests shorten it."""

    #: The first retry waits a random time up to this (full jitter); the bound doubles for each next one,
    initial_seconds: float = 0.1
    #: up to this.
    max_seconds: float = 2.0
    #: A 429 is retried only when the upstream asks to wait no longer than this.
    max_retry_after_seconds: float = 2.0


class CallGuard:
    """Applies one service's limits to its calls."""

    def __init__(self, service_name: str, limits: ServiceLimits, backoff: Backoff | None = None) -> None:
        self._service_name = service_name
        self._limits = limits
        self._backoff = backoff or Backoff()
        self._running = 0
        self._refused_before = False

    @property
    def limits(self) -> ServiceLimits:
        """The limits this guard applies."""
        return self._limits

    @property
    def running(self) -> int:
        """Calls of this service now in flight."""
        return self._running

    async def stream(
        self, open_stream: Callable[[], AsyncGenerator[_T, None]], deadline: float | None
    ) -> AsyncGenerator[_T, None]:
        """Yield ``open_stream()``'s events under the limits; ``deadline`` is on time.monotonic()."""
        limits = self._limits
        with self._slot():
            # grpc itself cancels the call at the caller's deadline; it matters here for retries.
            retry_deadline = _Limit(deadline, "").sooner(limits.total_timeout_seconds, "").at
            watchdog = _Watchdog(
                limits.first_token_timeout_seconds, limits.idle_timeout_seconds, limits.total_timeout_seconds
            )
            attempt = 1
            try:
                while True:
                    events = open_stream()
                    delivered = False
                    try:
                        while True:
                            watchdog.start_wait()
                            try:
                                event = await anext(events)
                            except StopAsyncIteration:
                                return
                            except asyncio.CancelledError:
                                if (expired := watchdog.expired()) is not None:
                                    raise _timeout(expired) from None
                                raise
                            finally:
                                watchdog.end_wait()
                            delivered = True
                            yield event
                    except UpstreamError as error:
                        # Once the caller has text, a retry would repeat it (and the upstream did work
                        # anyway): report the failure instead.
                        delay = None if delivered else self._retry_delay(error, attempt, retry_deadline)
                        if delay is None:
                            raise
                    finally:
                        await events.aclose()
                    await asyncio.sleep(delay)
                    attempt += 1
            finally:
                watchdog.close()

    async def call(self, run: Callable[[], Awaitable[_T]], deadline: float | None) -> _T:
        """Await ``run()`` under the limits; for a unary call the whole answer is the first event."""
        limits = self._limits
        with self._slot():
            total = _Limit(None, "").sooner(limits.total_timeout_seconds, "the whole call")
            retry_deadline = total.sooner_at(deadline, "").at
            attempt = 1
            while True:
                try:
                    return await total.sooner(limits.first_token_timeout_seconds, "the answer").bound(run())
                except UpstreamError as error:
                    delay = self._retry_delay(error, attempt, retry_deadline)
                    if delay is None:
                        raise
                await asyncio.sleep(delay)
                attempt += 1

    def _retry_delay(self, error: UpstreamError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None when the failure must be reported."""
        backoff = self._backoff
        if attempt >= self._limits.max_attempts or not (error.transient and error.unprocessed):
            return None
        if isinstance(error, UpstreamRateLimited):
            if error.retry_after_seconds is None or error.retry_after_seconds > backoff.max_retry_after_seconds:
                return None
            delay = error.retry_after_seconds
        else:
            # Exponential backoff with full jitter, so retries from many callers spread out.
            delay = random.uniform(0, min(backoff.max_seconds, backoff.initial_seconds * 2 ** (attempt - 1)))
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        limit = self._limits.max_concurrent_calls
        if self._running >= limit:
            if not self._refused_before:
                # Once per service and process: refusals can come by the thousand a second.
                self._refused_before = True
                _LOGGER.warning(
                    "service %r reached its limit of %d concurrent calls and refuses more "
                    "(RESOURCE_EXHAUSTED); raise max_concurrent_calls if the host has room "
                    "(logged once)",
                    self._service_name,
                    limit,
                )
            raise Overloaded(
                f"service {self._service_name!r} is at its limit of {limit} concurrent calls; retry shortly"
            )
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1


@dataclass(frozen=True, slots=True)
class _Limit:
    """A point in time (time.monotonic()) an await must finish by, and what it bounds."""

    at: float | None
    what: str

    def sooner(self, seconds: float | None, what: str) -> _Limit:
        """This limit, or one ``seconds`` from now if that comes first."""
        return self.sooner_at(None if seconds is None else time.monotonic() + seconds, what)

    def sooner_at(self, at: float | None, what: str) -> _Limit:
        """This limit, or ``at`` if that comes first."""
        if at is None or (self.at is not None and self.at <= at):
            return self
        return _Limit(at, what)

    async def bound(self, awaitable: Awaitable[_T]) -> _T:
        """Await; past the limit the await is cancelled, which closes any upstream read."""
        if self.at is None:
            return await awaitable
        try:
            async with asyncio.timeout(max(0.0, self.at - time.monotonic())):
                return await awaitable
        except TimeoutError:
            raise _timeout(self.what) from None


def _timeout(what: str) -> UpstreamTimeout:
    return UpstreamTimeout(f"no answer in time for {what}", provider="gateway")


class _Watchdog:
    """Enforces a stream's timeouts with one timer, so each event costs two assignments.

    A timer per event (``asyncio.timeout`` around every read) costs ~10 µs a token. The
    watchdog instead notes when each wait for the next event starts; its single timer
    wakes up at the earliest moment a limit could pass, re-checks, and either re-arms
    or cancels the task, which is then inside the provider's read: the read is
    cancelled and the provider closes its upstream request. Time spent while the
    caller reads slowly (the generator suspended at ``yield``) never counts against
    the upstream, and the task is never cancelled outside the read.
    """

    __slots__ = (
        "_cancelling",
        "_expired",
        "_first",
        "_handle",
        "_idle",
        "_loop",
        "_since",
        "_task",
        "_total_at",
        "_waits",
    )

    def __init__(self, first: float | None, idle: float | None, total: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a stream is always read by a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._first = first
        self._idle = idle
        self._total_at = None if total is None else self._loop.time() + total
        self._since: float | None = None  # when the current wait began; None between waits
        self._waits = 0
        self._handle: asyncio.TimerHandle | None = None
        self._expired: str | None = None

    def start_wait(self) -> None:
        """A read of the next event begins."""
        if self._expired is not None:  # the whole call's time ran out while the caller was reading
            raise _timeout(self._expired)
        self._since = self._loop.time()
        if self._handle is None:
            self._arm()
        elif self._waits == 1:
            # The first event came: the timer is still set for the first-event limit, which may be
            # later than this wait's idle one. Later waits only move the limit later, so the timer
            # then wakes up early and re-arms.
            self._handle.cancel()
            self._arm()

    def end_wait(self) -> None:
        """The read finished (an event, the end, or an error)."""
        self._since = None
        self._waits += 1

    def expired(self) -> str | None:
        """After a CancelledError in the read: what ran out, if the watchdog caused it."""
        if self._expired is None or self._task.uncancel() > self._cancelling:
            return None
        return self._expired

    def close(self) -> None:
        """Stop the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _limit(self, start: float) -> tuple[float | None, str]:
        """The moment a wait that began at ``start`` runs out, and which limit that is."""
        per_wait, what = (self._first, "the first event") if self._waits == 0 else (self._idle, "the next event")
        at = None if per_wait is None else start + per_wait
        if self._total_at is not None and (at is None or self._total_at <= at):
            return self._total_at, "the whole call"
        return at, what

    def _arm(self) -> None:
        now = self._loop.time()
        at, _ = self._limit(self._since if self._since is not None else now)
        self._handle = None if at is None else self._loop.call_at(at, self._check)

    def _check(self) -> None:
        self._handle = None
        now = self._loop.time()
        if self._since is None:
            # Between reads (the caller is reading): only the whole call's time can run out,
            # and the next read is refused then; otherwise look again later.
            if self._total_at is not None and now >= self._total_at:
                self._expired = "the whole call"
            else:
                self._arm()
            return
        at, what = self._limit(self._since)
        if at is not None and now >= at:
            self._expired = what
            self._task.cancel()
        else:
            self._arm()
