"""CallGuard on its own: timeouts, retries only where the upstream did no work, and load shedding."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

import pytest

from providers.errors import (
    Overloaded,
    UpstreamAuthError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.guard import Backoff, CallGuard
from providers.limits import DEFAULT_LIMITS, ServiceLimits


class _Upstream:
    """A scripted upstream: each attempt fails or yields, and records whether it was closed."""

    def __init__(self, *attempts: list[object]) -> None:
        self.attempts = list(attempts)
        self.opened = 0
        self.closed = 0

    async def stream(self) -> AsyncGenerator[str, None]:
        script = self.attempts[self.opened]
        self.opened += 1
        try:
            for step in script:
                if isinstance(step, BaseException):
                    raise step
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    continue
                yield str(step)
        finally:
            self.closed += 1


def _unavailable(*, unprocessed: bool = True) -> UpstreamUnavailable:
    """A 502 answer where the stream was due (unprocessed), or a connection that broke after the upstream began."""
    return UpstreamUnavailable("502", provider="test", upstream_code="502", unprocessed=unprocessed)


async def _collect(guard: CallGuard, upstream: _Upstream, deadline: float | None = None) -> list[str]:
    return [event async for event in guard.stream(upstream.stream, deadline)]


#: Retries as in production, with backoffs short enough for a test.
FAST = Backoff(initial_seconds=0.001, max_seconds=0.002)


async def test_a_transient_failure_before_the_first_event_is_retried() -> None:
    upstream = _Upstream([_unavailable()], [_unavailable()], ["a", "b"])
    assert await _collect(CallGuard("s", DEFAULT_LIMITS, FAST), upstream) == ["a", "b"]
    assert (upstream.opened, upstream.closed) == (3, 3)


async def test_a_transient_failure_after_the_upstream_started_work_is_not_retried() -> None:
    # E.g. the connection broke after Coze created the chat, before any text: a retry would
    # run (and bill) a second chat.
    upstream = _Upstream([_unavailable(unprocessed=False)], ["a", "b"])
    with pytest.raises(UpstreamUnavailable):
        await _collect(CallGuard("s", DEFAULT_LIMITS, FAST), upstream)
    assert upstream.opened == 1


async def test_an_unary_call_is_retried_only_where_the_upstream_did_no_work() -> None:
    for unprocessed, expected_attempts in ((True, 2), (False, 1)):
        attempts = 0

        async def run(unprocessed: bool = unprocessed) -> str:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise _unavailable(unprocessed=unprocessed)
            return "ok"

        attempts = 0
        if expected_attempts == 2:
            assert await CallGuard("s", DEFAULT_LIMITS, FAST).call(run, None) == "ok"
        else:
            with pytest.raises(UpstreamUnavailable):
                await CallGuard("s", DEFAULT_LIMITS, FAST).call(run, None)
        assert attempts == expected_attempts


async def test_attempts_are_limited() -> None:
    upstream = _Upstream([_unavailable()], [_unavailable()], [_unavailable()], ["never"])
    with pytest.raises(UpstreamUnavailable):
        await _collect(CallGuard("s", DEFAULT_LIMITS, FAST), upstream)
    assert upstream.opened == DEFAULT_LIMITS.max_attempts


async def test_a_failure_after_the_first_event_is_never_retried() -> None:
    upstream = _Upstream(["a", _unavailable()], ["a", "b"])
    received: list[str] = []
    with pytest.raises(UpstreamUnavailable):
        async for event in CallGuard("s", DEFAULT_LIMITS, FAST).stream(upstream.stream, None):
            received.append(event)
    assert received == ["a"], "a retry would repeat text the caller already has"
    assert upstream.opened == 1


async def test_failures_retrying_cannot_fix_are_not_retried() -> None:
    upstream = _Upstream([UpstreamAuthError("401", provider="test")], ["a"])
    with pytest.raises(UpstreamAuthError):
        await _collect(CallGuard("s", DEFAULT_LIMITS, FAST), upstream)
    assert upstream.opened == 1


@pytest.mark.parametrize(("retry_after", "retried"), [(0.01, True), (5.0, False), (None, False)])
async def test_rate_limits_are_retried_only_after_a_short_retry_after(retry_after: float | None, retried: bool) -> None:
    limited = UpstreamRateLimited("429", provider="test", retry_after_seconds=retry_after, unprocessed=True)
    upstream = _Upstream([limited], ["ok"])
    if retried:
        assert await _collect(CallGuard("s", DEFAULT_LIMITS, FAST), upstream) == ["ok"]
    else:
        with pytest.raises(UpstreamRateLimited):
            await _collect(CallGuard("s", DEFAULT_LIMITS, FAST), upstream)
    assert upstream.opened == (2 if retried else 1)


async def test_no_retry_when_the_backoff_would_pass_the_deadline() -> None:
    slow = Backoff(initial_seconds=10.0, max_seconds=10.0)
    upstream = _Upstream([UpstreamRateLimited("429", provider="t", retry_after_seconds=1.0, unprocessed=True)], ["ok"])
    with pytest.raises(UpstreamRateLimited):
        await _collect(CallGuard("s", DEFAULT_LIMITS, slow), upstream, deadline=time.monotonic() + 0.5)
    assert upstream.opened == 1


@pytest.mark.parametrize(
    ("limits", "script", "what"),
    [
        (ServiceLimits(first_token_timeout_seconds=0.05), [1.0, "late"], "the first event"),
        (ServiceLimits(idle_timeout_seconds=0.05), ["a", 1.0, "late"], "the next event"),
        (ServiceLimits(total_timeout_seconds=0.15), ["a", 0.1, "b", 0.1, "c"], "the whole call"),
    ],
)
async def test_timeouts_end_the_call_and_close_the_upstream(
    limits: ServiceLimits, script: list[object], what: str
) -> None:
    upstream = _Upstream(script)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=what):
        await _collect(CallGuard("s", limits), upstream)
    assert time.monotonic() - started < 0.9
    assert upstream.closed == 1


async def test_an_idle_timeout_shorter_than_the_first_token_one_applies_from_the_first_event() -> None:
    upstream = _Upstream(["a", 1.0, "late"])
    limits = ServiceLimits(first_token_timeout_seconds=5.0, idle_timeout_seconds=0.05)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="the next event"):
        await _collect(CallGuard("s", limits), upstream)
    assert time.monotonic() - started < 0.9
    assert upstream.closed == 1


async def test_a_full_service_refuses_at_once_and_frees_its_slots() -> None:
    guard = CallGuard("s", ServiceLimits(max_concurrent_calls=2))
    gate = asyncio.Event()

    async def slow() -> AsyncGenerator[str, None]:
        await gate.wait()
        yield "done"

    first = asyncio.create_task(_drain(guard.stream(slow, None)))
    second = asyncio.create_task(_drain(guard.stream(slow, None)))
    await asyncio.sleep(0.01)
    assert guard.running == 2
    with pytest.raises(Overloaded, match="limit of 2"):
        await _drain(guard.stream(slow, None))
    gate.set()
    assert await first == ["done"] and await second == ["done"]
    assert guard.running == 0


async def test_the_first_refusal_of_a_service_is_logged_once_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    guard = CallGuard("busy-service", ServiceLimits(max_concurrent_calls=1))
    gate = asyncio.Event()

    async def slow() -> AsyncGenerator[str, None]:
        await gate.wait()
        yield "done"

    holder = asyncio.create_task(_drain(guard.stream(slow, None)))
    await asyncio.sleep(0.01)
    with caplog.at_level("WARNING", logger="providers.guard"):
        for _ in range(3):
            with pytest.raises(Overloaded):
                await _drain(guard.stream(slow, None))
    gate.set()
    await holder
    warnings = [record for record in caplog.records if record.name == "providers.guard"]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING"
    message = warnings[0].getMessage()
    assert "'busy-service'" in message and "limit of 1" in message
    assert "raise max_concurrent_calls" in message, "the WARNING names the setting to raise"
    assert await _drain(guard.stream(slow, None)) == ["done"]


async def _drain(events: AsyncGenerator[str, None]) -> list[str]:
    return [event async for event in events]


async def test_unary_calls_are_retried_and_bounded() -> None:
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise _unavailable()
        return "answer"

    assert await CallGuard("s", DEFAULT_LIMITS, FAST).call(flaky, None) == "answer"
    assert attempts == 3

    async def stuck() -> str:
        await asyncio.sleep(5)
        return "never"

    with pytest.raises(UpstreamTimeout, match="the answer"):
        await CallGuard("s", ServiceLimits(first_token_timeout_seconds=0.05)).call(stuck, None)


async def test_a_slow_reader_does_not_count_against_the_idle_timeout() -> None:
    upstream = _Upstream(["a", "b", "c"])
    received = []
    async for event in CallGuard("s", ServiceLimits(idle_timeout_seconds=0.05)).stream(upstream.stream, None):
        received.append(event)
        await asyncio.sleep(0.15)  # the caller reads slowly; the upstream is always ready
    assert received == ["a", "b", "c"]


async def test_the_whole_call_running_out_while_the_caller_reads_refuses_the_next_read() -> None:
    upstream = _Upstream(["a", "b", "c"])
    received = []
    with pytest.raises(UpstreamTimeout, match="the whole call"):
        async for event in CallGuard("s", ServiceLimits(total_timeout_seconds=0.1)).stream(upstream.stream, None):
            received.append(event)
            await asyncio.sleep(0.15)
    assert received == ["a"]
    assert upstream.closed == 1


async def test_an_outside_cancel_stays_a_cancel() -> None:
    upstream = _Upstream([5.0, "late"])
    task = asyncio.create_task(
        _drain(
            CallGuard("s", ServiceLimits(idle_timeout_seconds=10, first_token_timeout_seconds=10)).stream(
                upstream.stream, None
            )
        )
    )
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert upstream.closed == 1
