"""Per-key limits: requests per minute, concurrent calls, tokens per minute and per day.

**Windows.** Each rate limit is a sliding window cut into buckets (1 s for a minute, 5 min for
a day). A call is admitted when its cost fits beside everything counted in the buckets that
overlap the last window (the current bucket and the whole window before it), so no window of
that length, wherever it starts, ever holds more than the limit: there is no boundary at which
a fixed minute's budget can be spent twice. Spent budget comes back with its bucket, between
one window and one window plus a bucket after it was spent.

**Reservations.** A call's tokens are not known until it ends, so admission reserves an
estimate (its input, plus its ``max_tokens`` or the service's ``reserved_output_tokens``) and
refuses the call if that does not fit. When the call ends, however it ends, the reservation is
settled: the estimate is taken back and the tokens it really used are counted in its place
(``server/usage.py`` estimates them when the upstream reported none).

**Stores.** ``MemoryLimitStore`` keeps the windows in this process (the default, nothing to
install). ``RedisLimitStore`` keeps them in Redis (``AIP_REDIS_URL``), each admission and each
settlement one Lua script, run atomically on Redis's own clock: any number of replicas and
workers share one budget exactly. Concurrent calls there are leases that expire, so a replica
that dies does not hold its slots for ever.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from providers.errors import (
    CallerLimitExceeded,
    CallerOverloaded,
    CallerRateLimited,
    LimitsUnavailable,
    TokenQuotaExceeded,
)
from server.callers import CallerKey

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Window:
    """A sliding window: ``buckets`` buckets of ``width`` seconds."""

    width: int
    buckets: int

    @property
    def seconds(self) -> int:
        return self.width * self.buckets


MINUTE = Window(width=1, buckets=60)
DAY = Window(width=300, buckets=288)
#: How soon a caller at its concurrency limit is told to retry: some call ends every so often.
CONCURRENCY_RETRY_SECONDS = 1.0

# The limits in the order they are checked: (setting name, error class, window or None).
_LIMITS: tuple[tuple[str, type[CallerLimitExceeded], Window | None], ...] = (
    ("max_concurrent_calls", CallerOverloaded, None),
    ("requests_per_minute", CallerRateLimited, MINUTE),
    ("tokens_per_minute", TokenQuotaExceeded, MINUTE),
    ("tokens_per_day", TokenQuotaExceeded, DAY),
)


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one admitted call holds until it is settled."""

    key: CallerKey
    call_id: str
    #: Tokens reserved, and the buckets (by index) they were counted in, per window.
    tokens: int
    minute_bucket: int
    day_bucket: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit refused a call, and when a retry could succeed (None: never, as it is)."""

    limit: str
    retry_after_seconds: float | None


class LimitStore(Protocol):
    """Where the windows live; each method is one atomic step."""

    async def admit(self, key: CallerKey, call_id: str, tokens: int, lease_seconds: float) -> Reservation | Refusal:
        """Check every limit of ``key`` and, if all have room, count the call in all of them."""

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Free the call's concurrency slot and replace its reserved tokens by ``used_tokens``."""

    async def aclose(self) -> None:
        """Release connections."""


class StoreUnreachable(RuntimeError):
    """The store could not be asked (Redis down or too slow)."""


# --- the limiter the interceptor uses ------------------------------------------------------------


class CallerLimits:
    """Admits and settles the calls of keys with limits, over a store; fails open or closed."""

    def __init__(self, store: LimitStore, *, fail_open: bool = False) -> None:
        self._store = store
        self._fail_open = fail_open
        self._outage_logged = False

    async def admit(self, key: CallerKey, call_id: str, tokens: int, lease_seconds: float) -> Reservation | None:
        """Reserve the call's place (None: the store is unreachable and the gateway fails open).

        Raises:
            CallerLimitExceeded: a limit has no room (the subclass and ``limit`` say which).
            LimitsUnavailable: the store is unreachable and the gateway fails closed.
        """
        try:
            outcome = await self._store.admit(key, call_id, tokens if _counts_tokens(key) else 0, lease_seconds)
        except StoreUnreachable as error:
            self._note_outage(error)
            if self._fail_open:
                return None
            raise LimitsUnavailable(
                "the gateway cannot check the caller's limits now (its limit store is unreachable); retry shortly"
            ) from None
        self._note_recovery()
        if isinstance(outcome, Refusal):
            raise _refusal_error(key, outcome, tokens)
        return outcome

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Settle an admitted call; a store that is unreachable now keeps the estimate (logged)."""
        key = reservation.key
        if key.max_concurrent_calls is None and not _counts_tokens(key):
            return  # nothing to free or correct: a request counted is counted (and Redis is not asked)
        try:
            await self._store.settle(reservation, used_tokens if _counts_tokens(reservation.key) else 0)
        except StoreUnreachable as error:
            self._note_outage(error)

    async def aclose(self) -> None:
        await self._store.aclose()

    def _note_outage(self, error: StoreUnreachable) -> None:
        if not self._outage_logged:
            self._outage_logged = True
            _LOGGER.warning(
                "the limit store is unreachable (%s): calls of keys with limits are %s until it is back",
                error,
                "admitted without limits (AIP_REDIS_FAIL_OPEN=true)" if self._fail_open else "refused (UNAVAILABLE)",
            )

    def _note_recovery(self) -> None:
        if self._outage_logged:
            self._outage_logged = False
            _LOGGER.warning("the limit store is reachable again: limits apply again")


def _counts_tokens(key: CallerKey) -> bool:
    return key.tokens_per_minute is not None or key.tokens_per_day is not None


def _refusal_error(key: CallerKey, refusal: Refusal, tokens: int) -> CallerLimitExceeded:
    limit_value = getattr(key, refusal.limit)
    kind = next(error for name, error, _ in _LIMITS if name == refusal.limit)
    if refusal.limit == "max_concurrent_calls":
        what = f"the key {key.name!r} has its {limit_value} concurrent calls (max_concurrent_calls) in flight"
    elif refusal.limit == "requests_per_minute":
        what = f"the key {key.name!r} made its {limit_value} calls of the last minute (requests_per_minute)"
    elif refusal.retry_after_seconds is None:
        what = (
            f"the call alone reserves {tokens} tokens, more than the key {key.name!r} may use "
            f"({refusal.limit} = {limit_value}); ask for fewer output tokens (max_tokens) or send less input"
        )
    else:
        what = (
            f"the call reserves {tokens} tokens, which do not fit in what is left of the key {key.name!r}'s "
            f"{refusal.limit} ({limit_value})"
        )
    retry = "" if refusal.retry_after_seconds is None else f"; retry in {refusal.retry_after_seconds:.1f} s"
    return kind(what + retry, key=key.name, limit=refusal.limit, retry_after_seconds=refusal.retry_after_seconds)


# --- in this process -------------------------------------------------------------------------------


class _MemoryWindow:
    """One sliding window in memory: bucket index -> amount, and their total (see the module docstring)."""

    __slots__ = ("_amounts", "_oldest", "_total", "window")

    def __init__(self, window: Window) -> None:
        self.window = window
        self._amounts: dict[int, int] = {}
        self._total = 0
        self._oldest = 0

    def _prune(self, now: float) -> int:
        """Drop the buckets that no longer overlap the last window; returns the current bucket's index."""
        current = math.floor(now / self.window.width)
        first = current - self.window.buckets
        if self._oldest < first:
            if first - self._oldest > self.window.buckets:
                self._amounts.clear()
                self._total = 0
            else:
                for bucket in range(self._oldest, first):
                    self._total -= self._amounts.pop(bucket, 0)
            self._oldest = first
        return current

    def room_for(self, cost: int, limit: int, now: float) -> float | None:
        """0.0 when ``cost`` fits now, else the seconds until it will (None: it never will)."""
        self._prune(now)
        if self._total + cost <= limit:
            return 0.0
        if cost > limit:
            return None
        freed = 0
        for bucket in sorted(self._amounts):
            freed += self._amounts[bucket]
            if self._total - freed + cost <= limit:
                return max(0.0, (bucket + 1) * self.window.width + self.window.seconds - now)
        return float(self.window.seconds)  # unreachable while the total is the buckets' sum

    def add(self, amount: int, now: float) -> int:
        """Count ``amount`` in the current bucket; returns its index."""
        current = self._prune(now)
        if amount:
            self._amounts[current] = self._amounts.get(current, 0) + amount
            self._total += amount
        return current

    def take_back(self, amount: int, bucket: int, now: float) -> None:
        """Remove ``amount`` counted earlier in ``bucket``, unless that bucket already left the window."""
        self._prune(now)
        if amount and bucket in self._amounts:
            self._amounts[bucket] -= amount
            self._total -= amount


class MemoryLimitStore:
    """The windows of every key in this process (each worker process has its own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, str], _MemoryWindow] = {}
        self._in_flight: dict[str, int] = {}

    def _window(self, key: CallerKey, limit: str, window: Window) -> _MemoryWindow:
        found = self._windows.get((key.name, limit))
        if found is None:
            found = self._windows[key.name, limit] = _MemoryWindow(window)
        return found

    async def admit(self, key: CallerKey, call_id: str, tokens: int, lease_seconds: float) -> Reservation | Refusal:
        now = self._clock()
        costs = {"requests_per_minute": 1, "tokens_per_minute": tokens, "tokens_per_day": tokens}
        for name, _error, window in _LIMITS:
            limit = getattr(key, name)
            if limit is None:
                continue
            if window is None:
                if self._in_flight.get(key.name, 0) >= limit:
                    return Refusal(name, CONCURRENCY_RETRY_SECONDS)
                continue
            wait = self._window(key, name, window).room_for(costs[name], limit, now)
            if wait != 0.0:
                return Refusal(name, wait)
        if key.max_concurrent_calls is not None:
            self._in_flight[key.name] = self._in_flight.get(key.name, 0) + 1
        buckets = {"tokens_per_minute": 0, "tokens_per_day": 0}
        for name, _error, window in _LIMITS:
            if window is not None and getattr(key, name) is not None:
                bucket = self._window(key, name, window).add(costs[name], now)
                if name in buckets:
                    buckets[name] = bucket
        return Reservation(key, call_id, tokens, buckets["tokens_per_minute"], buckets["tokens_per_day"])

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        key, now = reservation.key, self._clock()
        if key.max_concurrent_calls is not None:
            self._in_flight[key.name] -= 1
        for name, bucket in (
            ("tokens_per_minute", reservation.minute_bucket),
            ("tokens_per_day", reservation.day_bucket),
        ):
            window = self._windows.get((key.name, name))
            if window is not None:
                window.take_back(reservation.tokens, bucket, now)
                window.add(used_tokens, now)

    async def aclose(self) -> None:
        return None


# --- in Redis ---------------------------------------------------------------------------------------

# The window in Redis is a hash: bucket index -> amount, plus the fields "total" and "oldest";
# the same steps as _MemoryWindow. Time is Redis's (TIME), so replicas' clocks do not matter.
_LUA_WINDOW = """
local function prune(key, width, count, now)
  local current = math.floor(now / width)
  local first = current - count
  local oldest = tonumber(redis.call('HGET', key, 'oldest') or first)
  local total = tonumber(redis.call('HGET', key, 'total') or 0)
  if oldest < first then
    if first - oldest > count then
      redis.call('DEL', key)
      total = 0
    else
      for bucket = oldest, first - 1 do
        local amount = redis.call('HGET', key, bucket)
        if amount then
          total = total - tonumber(amount)
          redis.call('HDEL', key, bucket)
        end
      end
    end
  end
  return current, first, total
end

local function room_for(key, width, count, now, cost, limit)
  local current, first, total = prune(key, width, count, now)
  redis.call('HSET', key, 'oldest', first, 'total', total)
  if total + cost <= limit then return 0 end
  if cost > limit then return -1 end
  local freed = 0
  for bucket = first, current do
    local amount = redis.call('HGET', key, bucket)
    if amount then
      freed = freed + tonumber(amount)
      if total - freed + cost <= limit then
        return math.max(0, (bucket + 1) * width + width * count - now)
      end
    end
  end
  return width * count
end

local function add(key, width, count, now, amount)
  local current, first, total = prune(key, width, count, now)
  if amount ~= 0 then
    redis.call('HINCRBY', key, current, amount)
    total = total + amount
  end
  redis.call('HSET', key, 'oldest', first, 'total', total)
  redis.call('EXPIRE', key, width * (count + 2))
  return current
end

local function take_back(key, width, count, now, amount, bucket)
  local current, first, total = prune(key, width, count, now)
  if amount ~= 0 and bucket >= first and redis.call('HEXISTS', key, bucket) == 1 then
    redis.call('HINCRBY', key, bucket, -amount)
    total = total - amount
  end
  redis.call('HSET', key, 'oldest', first, 'total', total)
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
"""

# KEYS: in-flight zset, rpm, tpm, tpd. ARGV: call id, lease seconds, tokens, then the four limits
# (0: none) in _LIMITS order. Returns {0, minute bucket, day bucket} or {1, limit index, retry ms}.
_LUA_ADMIT = (
    _LUA_WINDOW
    + f"""
local call_id, lease, tokens = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_calls, rpm, tpm, tpd = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if max_calls > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= max_calls then return {{1, 1, {int(CONCURRENCY_RETRY_SECONDS * 1000)}}} end
end
local checks = {{{{KEYS[2], {MINUTE.width}, {MINUTE.buckets}, 1, rpm, 2}},
                {{KEYS[3], {MINUTE.width}, {MINUTE.buckets}, tokens, tpm, 3}},
                {{KEYS[4], {DAY.width}, {DAY.buckets}, tokens, tpd, 4}}}}
for _, check in ipairs(checks) do
  if check[5] > 0 then
    local wait = room_for(check[1], check[2], check[3], now, check[4], check[5])
    if wait ~= 0 then return {{1, check[6], math.ceil(wait * 1000)}} end
  end
end
if max_calls > 0 then
  redis.call('ZADD', KEYS[1], now + lease, call_id)
  redis.call('EXPIRE', KEYS[1], math.ceil(lease) + 60)
end
local buckets = {{0, 0, 0}}
for index, check in ipairs(checks) do
  if check[5] > 0 then buckets[index] = add(check[1], check[2], check[3], now, check[4]) end
end
return {{0, buckets[2], buckets[3]}}
"""
)

# KEYS: in-flight zset, tpm, tpd. ARGV: call id, reserved tokens, used tokens, minute bucket, day bucket,
# whether tpm and tpd apply (1/0).
_LUA_SETTLE = (
    _LUA_WINDOW
    + f"""
redis.call('ZREM', KEYS[1], ARGV[1])
local reserved, used = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[6] == '1' then
  take_back(KEYS[2], {MINUTE.width}, {MINUTE.buckets}, now, reserved, tonumber(ARGV[4]))
  add(KEYS[2], {MINUTE.width}, {MINUTE.buckets}, now, used)
end
if ARGV[7] == '1' then
  take_back(KEYS[3], {DAY.width}, {DAY.buckets}, now, reserved, tonumber(ARGV[5]))
  add(KEYS[3], {DAY.width}, {DAY.buckets}, now, used)
end
return 0
"""
)

#: Every key of a caller shares one hash tag, so its scripts run on one Redis Cluster node too.
_KEY_PREFIX = "aiplatform:limits:"
#: After a failure, Redis is not asked again for this long: a dead Redis must not slow every call.
_RETRY_AFTER_FAILURE_SECONDS = 0.5


def _redis_keys(name: str) -> list[str]:
    tag = f"{_KEY_PREFIX}{{{name}}}"
    return [f"{tag}:in_flight", f"{tag}:requests_per_minute", f"{tag}:tokens_per_minute", f"{tag}:tokens_per_day"]


class RedisLimitStore:
    """The windows in Redis, shared by every gateway process that uses the same ``AIP_REDIS_URL``."""

    def __init__(self, url: str, *, timeout_seconds: float = 1.0) -> None:
        # Imported here: a gateway without AIP_REDIS_URL never loads the client.
        import redis.asyncio

        self._redis_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._client: Any = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            health_check_interval=30,
        )
        self._admit_script = self._client.register_script(_LUA_ADMIT)
        self._settle_script = self._client.register_script(_LUA_SETTLE)
        self._failed_at = -math.inf

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if time.monotonic() - self._failed_at < _RETRY_AFTER_FAILURE_SECONDS:
            raise StoreUnreachable("Redis failed moments ago")
        try:
            return await script(keys=keys, args=args)
        except self._redis_errors as error:
            self._failed_at = time.monotonic()
            # The type only: redis-py's messages can quote the URL, which may hold a password.
            raise StoreUnreachable(f"Redis: {type(error).__name__}") from None

    async def admit(self, key: CallerKey, call_id: str, tokens: int, lease_seconds: float) -> Reservation | Refusal:
        limits = [getattr(key, name) or 0 for name, _error, _window in _LIMITS]
        result = await self._run(self._admit_script, _redis_keys(key.name), [call_id, lease_seconds, tokens, *limits])
        if int(result[0]) == 0:
            return Reservation(key, call_id, tokens, int(result[1]), int(result[2]))
        limit = _LIMITS[int(result[1]) - 1][0]
        wait_ms = int(result[2])
        return Refusal(limit, None if wait_ms < 0 else wait_ms / 1000)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        key = reservation.key
        in_flight, _rpm, tpm, tpd = _redis_keys(key.name)
        await self._run(
            self._settle_script,
            [in_flight, tpm, tpd],
            [
                reservation.call_id,
                reservation.tokens,
                used_tokens,
                reservation.minute_bucket,
                reservation.day_bucket,
                int(key.tokens_per_minute is not None),
                int(key.tokens_per_day is not None),
            ],
        )

    async def aclose(self) -> None:
        await self._client.aclose()
