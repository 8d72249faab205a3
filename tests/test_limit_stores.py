"""The limit stores (server/limits.py): the same rules in this process and in a real Redis.

Each rule runs against both stores; the window's sliding is checked on the memory store with
a clock the test moves (Redis keeps its own time), and the Redis store's sharing with two
clients, as two replicas would hold them.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.callers import CallerKey
from server.limits import (
    CONCURRENCY_RETRY_SECONDS,
    LimitStore,
    MemoryLimitStore,
    RedisLimitStore,
    Refusal,
    Reservation,
)
from tests.redis_server import RedisServer, running_redis

LEASE = 60.0
_calls = iter(range(1_000_000))


def key(name: str = "team", **limits: int) -> CallerKey:
    return CallerKey(name=name, digest=hashlib.sha256(name.encode()).digest(), services=("*",), **limits)


async def admit(store: LimitStore, caller: CallerKey, tokens: int = 0) -> Reservation | Refusal:
    return await store.admit(caller, f"call-{next(_calls)}", tokens, LEASE)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def store_of(kind: str, redis_server: Any) -> AsyncIterator[LimitStore]:
    store: LimitStore = MemoryLimitStore() if kind == "memory" else RedisLimitStore(redis_server.url)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LimitStore]:
    async with contextlib.AsyncExitStack() as stack:
        redis_server = None
        if request.param == "redis":
            redis_server = await stack.enter_async_context(running_redis(tmp_path_factory.mktemp("redis")))
        yield await stack.enter_async_context(store_of(request.param, redis_server))


async def test_requests_per_minute_admits_the_limit_then_refuses_with_a_retry_time(store: LimitStore) -> None:
    caller = key(requests_per_minute=3)
    for _ in range(3):
        assert isinstance(await admit(store, caller), Reservation)
    refusal = await admit(store, caller)
    assert isinstance(refusal, Refusal) and refusal.limit == "requests_per_minute"
    assert refusal.retry_after_seconds is not None and 0 < refusal.retry_after_seconds <= 61


async def test_concurrent_calls_are_refused_until_one_settles(store: LimitStore) -> None:
    caller = key(max_concurrent_calls=2)
    first, second = await admit(store, caller), await admit(store, caller)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    refusal = await admit(store, caller)
    assert refusal == Refusal("max_concurrent_calls", CONCURRENCY_RETRY_SECONDS)
    await store.settle(first, 0)
    assert isinstance(await admit(store, caller), Reservation)


async def test_a_reservation_that_does_not_fit_is_refused_and_one_that_never_can_has_no_retry(
    store: LimitStore,
) -> None:
    caller = key(tokens_per_minute=100)
    assert isinstance(await admit(store, caller, 60), Reservation)
    refusal = await admit(store, caller, 50)
    assert isinstance(refusal, Refusal) and refusal.limit == "tokens_per_minute"
    assert refusal.retry_after_seconds is not None and refusal.retry_after_seconds > 0
    assert await admit(store, caller, 101) == Refusal("tokens_per_minute", None)
    assert isinstance(await admit(store, caller, 40), Reservation)  # exactly what is left


async def test_settling_replaces_the_reservation_by_the_tokens_used(store: LimitStore) -> None:
    caller = key(tokens_per_minute=100, tokens_per_day=1000)
    reservation = await admit(store, caller, 90)
    assert isinstance(reservation, Reservation)
    assert isinstance(await admit(store, caller, 20), Refusal)
    await store.settle(reservation, 10)
    assert isinstance(await admit(store, caller, 90), Reservation)  # 10 used + 90 = the limit
    assert isinstance(await admit(store, caller, 1), Refusal)


async def test_usage_beyond_the_reservation_is_counted(store: LimitStore) -> None:
    caller = key(tokens_per_day=100)
    reservation = await admit(store, caller, 10)
    assert isinstance(reservation, Reservation)
    await store.settle(reservation, 95)  # the call used more than it reserved
    refusal = await admit(store, caller, 10)
    assert isinstance(refusal, Refusal) and refusal.limit == "tokens_per_day"
    assert isinstance(await admit(store, caller, 5), Reservation)


async def test_a_refused_call_takes_nothing_from_the_other_limits(store: LimitStore) -> None:
    caller = key(requests_per_minute=2, tokens_per_minute=100)
    assert await admit(store, caller, 150) == Refusal("tokens_per_minute", None)
    assert isinstance(await admit(store, caller, 50), Reservation)
    assert isinstance(await admit(store, caller, 50), Reservation)
    refusal = await admit(store, caller, 0)
    assert isinstance(refusal, Refusal) and refusal.limit == "requests_per_minute"
    assert refusal.retry_after_seconds == pytest.approx(60, abs=1.01)


async def test_keys_have_budgets_of_their_own(store: LimitStore) -> None:
    first, second = key("first", requests_per_minute=1), key("second", requests_per_minute=1)
    assert isinstance(await admit(store, first), Reservation)
    assert isinstance(await admit(store, second), Reservation)
    assert isinstance(await admit(store, first), Refusal)


# --- the sliding window, on a clock the test moves -------------------------------------------------


async def test_the_minute_window_slides_with_no_boundary_to_spend_twice_at() -> None:
    clock = Clock(1_000_059.5)  # half a second before a minute's boundary
    store = MemoryLimitStore(clock)
    caller = key(tokens_per_minute=100)
    assert isinstance(await admit(store, caller, 100), Reservation)
    clock.now += 1.0  # past the boundary: a fixed minute window would start afresh here
    refusal = await admit(store, caller, 100)
    assert isinstance(refusal, Refusal)
    # The spend leaves the window with its one-second bucket, a minute after it was spent.
    assert refusal.retry_after_seconds == pytest.approx(59.5)
    clock.now += 58.9
    assert isinstance(await admit(store, caller, 1), Refusal)
    clock.now += 0.6
    assert isinstance(await admit(store, caller, 100), Reservation)


async def test_no_sixty_seconds_ever_hold_more_than_the_limit() -> None:
    clock = Clock(2_000_000.0)
    store = MemoryLimitStore(clock)
    caller = key(requests_per_minute=10)
    admitted: list[float] = []
    for step in range(600):  # a call every 0.3 s for three minutes
        clock.now = 2_000_000.0 + step * 0.3
        if isinstance(await admit(store, caller), Reservation):
            admitted.append(clock.now)
    assert len(admitted) >= 28  # about ten a minute get through
    for start in admitted:
        assert sum(1 for moment in admitted if start <= moment < start + 60) <= 10


async def test_the_day_window_returns_spend_in_five_minute_steps() -> None:
    clock = Clock(3_000_000.0)
    store = MemoryLimitStore(clock)
    caller = key(tokens_per_day=1000)
    assert isinstance(await admit(store, caller, 1000), Reservation)
    clock.now += 86_399
    assert isinstance(await admit(store, caller, 1), Refusal)
    clock.now += 301
    assert isinstance(await admit(store, caller, 1000), Reservation)


async def test_a_settlement_after_its_bucket_left_the_window_counts_only_the_use() -> None:
    clock = Clock(4_000_000.0)
    store = MemoryLimitStore(clock)
    caller = key(tokens_per_minute=100)
    reservation = await admit(store, caller, 80)
    assert isinstance(reservation, Reservation)
    clock.now += 120  # a long call: its reservation left the window already
    await store.settle(reservation, 30)
    assert isinstance(await admit(store, caller, 70), Reservation)
    assert isinstance(await admit(store, caller, 1), Refusal)


# --- Redis: one budget for every replica ---------------------------------------------------------


async def test_two_replicas_share_one_budget_in_redis(redis_server: RedisServer) -> None:
    caller = key(tokens_per_minute=100, max_concurrent_calls=3)
    async with store_of("redis", redis_server) as one, store_of("redis", redis_server) as other:
        first = await admit(one, caller, 40)
        second = await admit(other, caller, 40)
        assert isinstance(first, Reservation) and isinstance(second, Reservation)
        assert isinstance(await admit(one, caller, 40), Refusal)
        await other.settle(first, 5)  # any replica may settle: the reservation says where it is
        assert isinstance(await admit(one, caller, 40), Reservation)  # 5 + 40 + 40
        assert isinstance(await admit(other, caller, 0), Reservation)  # the third call in flight
        assert await admit(one, caller, 0) == Refusal("max_concurrent_calls", CONCURRENCY_RETRY_SECONDS)
