"""Gives memory back to the operating system when a burst of calls is over.

glibc's malloc keeps what a process freed in its arenas for reuse, so after thousands of calls
end at once (a burst, or a flood of half-sent requests ended by the arrival bound) the gateway
would keep the burst's peak RSS for good, and a memory limit would count it. When the calls in
flight have fallen to half their peak since the last look, ``malloc_trim`` hands the free pages
back. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

_LOGGER = logging.getLogger(__name__)

#: How often the calls in flight are looked at (a comparison; the trim itself runs in a thread).
CHECK_SECONDS = 1.0
#: Calls: below a peak this small, what a trim frees is not worth its pause.
MIN_PEAK_CALLS = 256
#: Trims after a burst ended, one per check.
TRIMS_AFTER_BURST = 5


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


async def release_memory_after_bursts(take_peak: Callable[[], tuple[int, int]]) -> None:
    """Run until cancelled: once the calls in flight fell to half their peak, trim malloc's free memory.

    ``take_peak`` returns the calls in flight now and their peak since the last call, and starts
    a new peak from now. A burst's memory is freed in stages (its calls first, their connections
    when the clients close them), so the trim is repeated each second for a few seconds.
    """
    trim = _malloc_trim()
    if trim is None:
        _LOGGER.debug("no malloc_trim here: memory freed after bursts stays with the allocator")
        return
    burst_peak = trims_left = 0
    while True:
        await asyncio.sleep(CHECK_SECONDS)
        now, peak = take_peak()
        burst_peak = max(burst_peak, peak)
        if burst_peak >= MIN_PEAK_CALLS and now <= burst_peak // 2:
            _LOGGER.debug("calls in flight fell from %d to %d: returning free memory", burst_peak, now)
            burst_peak, trims_left = now, TRIMS_AFTER_BURST
        if trims_left:
            trims_left -= 1
            # In a thread: it walks the heap, which takes a few milliseconds after a large burst.
            await asyncio.to_thread(trim, 0)
