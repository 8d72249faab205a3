"""Call guards every service gets, whatever its provider: timeouts, safe retries, a concurrency cap.

A guard wraps one call to a service:

- **Timeouts.** Time to the first event, the longest silence between two events,
  and the whole call, each optional. A timeout cancels the provider's pending
  read, which closes its upstream request, and ends the call with UpstreamTimeout.
- **Retries, only where safe.** A transient failure (connect error, 502/503/504,
  a 429 whose Retry-After is short) is retried with exponential backoff and full
  jitter, within the caller's deadline and the attempt limit, and *only before the
  first event reached the caller*: after that a retry would repeat text the caller
  already has, so the failure is reported instead.
- **Load shedding.** At most ``max_concurrency`` calls of a service run at once;
  one more is refused at once with Overloaded instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from providers.errors import Overloaded, UpstreamError, UpstreamRateLimited, UpstreamTimeout

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """How one service's calls are guarded; None disables a limit."""

    first_event_timeout: float | None = None
    idle_timeout: float | None = None
    total_timeout: float | None = None
    max_attempts: int = 3
    backoff_initial: float = 0.1
    backoff_max: float = 2.0
    #: A 429 is retried only when the upstream asks to wait no longer than this.
    max_retry_after: float = 2.0
    max_concurrency: int | None = None


class CallGuard:
    """Applies one service's CallPolicy to its calls."""

    def __init__(self, service_name: str, policy: CallPolicy) -> None:
        self._service_name = service_name
        self._policy = policy
        self._running = 0

    @property
    def running(self) -> int:
        """Calls of this service now in flight."""
        return self._running

    async def stream(
        self, open_stream: Callable[[], AsyncGenerator[_T, None]], deadline: float | None
    ) -> AsyncGenerator[_T, None]:
        """Yield ``open_stream()``'s events under the policy; ``deadline`` is on time.monotonic()."""
        policy = self._policy
        with self._slot():
            # grpc itself cancels the call at the caller's deadline; it matters here for retries.
            total = _Limit(None, "").sooner(policy.total_timeout, "the whole call")
            retry_deadline = total.sooner_at(deadline, "").at
            attempt = 1
            while True:
                events = open_stream()
                delivered = False
                try:
                    limit = total.sooner(policy.first_event_timeout, "the first event")
                    while True:
                        try:
                            event = await limit.bound(anext(events))
                        except StopAsyncIteration:
                            return
                        delivered = True
                        yield event
                        limit = total.sooner(policy.idle_timeout, "the next event")
                except UpstreamError as error:
                    # Once the caller has text, a retry would repeat it: report the failure instead.
                    delay = None if delivered else self._retry_delay(error, attempt, retry_deadline)
                    if delay is None:
                        raise
                finally:
                    await events.aclose()
                await asyncio.sleep(delay)
                attempt += 1

    async def call(self, run: Callable[[], Awaitable[_T]], deadline: float | None) -> _T:
        """Await ``run()`` under the policy; for a unary call the whole answer is the first event."""
        policy = self._policy
        with self._slot():
            total = _Limit(None, "").sooner(policy.total_timeout, "the whole call")
            retry_deadline = total.sooner_at(deadline, "").at
            attempt = 1
            while True:
                try:
                    return await total.sooner(policy.first_event_timeout, "the answer").bound(run())
                except UpstreamError as error:
                    delay = self._retry_delay(error, attempt, retry_deadline)
                    if delay is None:
                        raise
                await asyncio.sleep(delay)
                attempt += 1

    def _retry_delay(self, error: UpstreamError, attempt: int, deadline: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None when the failure must be reported."""
        policy = self._policy
        if attempt >= policy.max_attempts or not error.transient:
            return None
        if isinstance(error, UpstreamRateLimited):
            if error.retry_after_seconds is None or error.retry_after_seconds > policy.max_retry_after:
                return None
            delay = error.retry_after_seconds
        else:
            # Exponential backoff with full jitter, so retries from many callers spread out.
            delay = random.uniform(0, min(policy.backoff_max, policy.backoff_initial * 2 ** (attempt - 1)))
        if deadline is not None and time.monotonic() + delay >= deadline:
            return None
        return delay

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        limit = self._policy.max_concurrency
        if limit is not None and self._running >= limit:
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
            raise UpstreamTimeout(f"no answer in time for {self.what}", provider="gateway") from None
