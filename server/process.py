"""What the gateway does to its process at start, so that load later does not pause it.

``make_room_for_descriptors``: room for every connection the gateway may hold. Every call in
flight holds an upstream connection, and every caller a gRPC one: a busy gateway holds thousands
of file descriptors. Two things stand in the way, and both are settled here once:

- The open-file limit. Many hosts start processes with a soft limit of 1,024; past it a new
  connection fails with EMFILE. The soft limit is raised as far as the hard limit allows (as Go's
  runtime does for every Go server); a hard limit below what the configured calls can need is
  said once, with what to raise.
- The kernel's descriptor table. Linux grows a process's table by doubling (256, 512, 1,024, ...)
  and, in a process with threads (grpc runs several), waits for an RCU grace period each time:
  7-15 ms during which the thread opening the descriptor, the event loop, stands still. Under a
  ramp of new streams that stalled every call in flight at the 256th, 512th, 1,024th and 2,048th
  connection (benchmarks/RESULTS.md run N). Opening one descriptor at the top of the range the
  gateway may need, and closing it, grows the table to its final size at start; it never shrinks.

``tune_garbage_collector``: Python's cycle collector kept from walking every stream's objects.
"""

from __future__ import annotations

import gc
import logging
import os
import resource

_LOGGER = logging.getLogger(__name__)

#: Descriptors beyond two per call in flight (a caller's connection, an upstream one): the
#: gateway's own files, sockets and pools, idle pooled upstream connections.
SPARE_DESCRIPTORS = 1_024


def descriptors_needed(max_calls_in_flight: int) -> int:
    """File descriptors a gateway admitting ``max_calls_in_flight`` calls may hold at once."""
    return 2 * max_calls_in_flight + SPARE_DESCRIPTORS


def make_room_for_descriptors(needed: int) -> int:
    """Raise the open-file limit toward ``needed`` and grow the descriptor table to match; returns the room made.

    Never fails the start: where the limit cannot be raised or a descriptor not opened, the
    gateway runs with what it has and says so.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as error:
            _LOGGER.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, error)
    room = wanted if soft == resource.RLIM_INFINITY else min(wanted, soft)
    if room < needed:
        _LOGGER.warning(
            "the open-file limit (%d) is below the %d descriptors AIP_MAX_CALLS_IN_FLIGHT calls may need: "
            "calls past it fail to connect; raise the hard limit (ulimit -Hn, LimitNOFILE=, a container's nofile)",
            room,
            needed,
        )
    _grow_descriptor_table(room)
    _LOGGER.info(
        "file descriptors: room for %d (open-file limit %s)",
        room,
        "unlimited" if soft == resource.RLIM_INFINITY else soft,
    )
    return room


def _grow_descriptor_table(size: int) -> None:
    # dup2 onto the highest descriptor the table must hold makes the kernel size the table for
    # it now; the descriptor is closed at once, the table stays.
    highest = size - 1
    if highest < 3:
        return
    try:
        os.fstat(highest)
    except OSError:
        pass
    else:
        return  # already open, so the table already reaches it
    probe = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(probe, highest, inheritable=False)
    except OSError as error:
        _LOGGER.debug("descriptor table not grown to %d: %s", size, error)
        return
    finally:
        os.close(probe)
    os.close(highest)


#: Allocations between young collections (CPython's default is 700), and how many collections of
#: one generation trigger one of the next (default 10 and 10).
GC_THRESHOLDS = (10_000, 20, 20)


def tune_garbage_collector() -> None:
    """Keep Python's cycle collector from pausing a busy gateway; call once, after start-up.

    With thousands of streams open, CPython's default thresholds run a full collection
    every few seconds, each walking every live object: 19 of them paused the event loop
    for up to 0.44 s apiece in the 5,000-stream benchmark, 4.2 s in all (benchmarks/RESULTS.md).
    Freezing what start-up created (modules, schemas, clients: never garbage) takes it out
    of every later collection, and higher thresholds make collections rarer; cycles are
    still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _LOGGER.info(
        "garbage collector: %d start-up objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold()
    )
