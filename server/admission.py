"""Caller admission: who calls (key), whether it may call that service, and whether its limits have room.

``server/interceptors.py`` asks ``CallerAdmission`` at three points of every call of the
gateway's own service: ``authenticate`` from the metadata alone, before the request is read;
``admit`` once the request names its service, before any upstream work; ``settle`` when the
call has ended, however it ended, with the usage ``server/usage.py`` counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from server.callers import CallerKey, CallerKeys, current_caller
from server.limits import CallerLimits, Reservation
from server.usage import requested_output_tokens

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceAllowance:
    """What a call of a service reserves: its output tokens when it sets no max_tokens, and the
    longest it may hold a concurrency slot (a lease that outlives a replica that died)."""

    reserved_output_tokens: int
    lease_seconds: float


class CallerAdmission:
    """Authenticates, admits and settles calls by caller key; see the module docstring."""

    def __init__(
        self,
        keys: CallerKeys,
        limits: CallerLimits,
        allowance_of: Callable[[str], ServiceAllowance],
    ) -> None:
        self._keys = keys
        self._limits = limits
        self._allowance_of = allowance_of
        # Settlements run as their own tasks: a cancelled call must still settle, and its
        # handler must not wait for Redis to end.
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def keys_required(self) -> bool:
        """Whether calls need a key (at least one is configured)."""
        return bool(self._keys)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> CallerKey | None:
        """The call's caller (None when no keys are configured), also set as ``current_caller``.

        Raises:
            Unauthenticated: keys are configured and the call has none of them.
        """
        if not self._keys:
            return None
        caller = self._keys.identify(metadata)
        current_caller.set(caller)
        return caller

    async def admit(
        self, caller: CallerKey, named_service: str, known_service: str, call_id: str, request: Any, input_tokens: int
    ) -> Reservation | None:
        """Check the caller may call ``named_service`` and reserve its place in the key's limits.

        ``known_service`` is the service's name when it exists ("" otherwise: the call will be
        refused NOT_FOUND and reserves nothing). Returns the reservation to settle, if any.

        Raises:
            PermissionDenied: the key's patterns do not admit the service.
            CallerLimitExceeded: a limit of the key has no room.
            LimitsUnavailable: the limit store is unreachable and the gateway fails closed.
        """
        caller.check_access(named_service)
        if not known_service or not caller.limited:
            return None
        allowance = self._allowance_of(known_service)
        output = requested_output_tokens(request)
        tokens = input_tokens + (allowance.reserved_output_tokens if output is None else output)
        return await self._limits.admit(caller, call_id, tokens, allowance.lease_seconds)

    def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Settle a call's reservation to ``used_tokens``, in the background."""
        task = asyncio.get_running_loop().create_task(self._limits.settle(reservation, used_tokens))
        self._settling.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._settling.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _LOGGER.error("settling a call's limits failed", exc_info=error)

    async def aclose(self) -> None:
        """Wait for the settlements under way, then close the limit store."""
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=5)
        await self._limits.aclose()
