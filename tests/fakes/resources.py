"""What a leak would make grow, counted from inside the test process: tasks, descriptors, connections, RSS.

The gateway, the fakes and the test share one process, so /proc/self sees both ends of every
upstream connection.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.fakes.upstreams import Upstream, until

_TCP_ESTABLISHED = "01"


@dataclass(frozen=True)
class ResourceSnapshot:
    """Counts of what a leak would make grow."""

    #: Live tasks by the name of their coroutine, besides the fakes' per-connection tasks (those
    #: mirror the pool's idle connections, which are counted in ``connections``).
    tasks: collections.Counter[str]
    descriptors: int  # open file descriptors of the process
    connections: dict[str, int]  # ESTABLISHED client connections to each fake, by provider
    rss_bytes: int  # resident set size

    @classmethod
    def take(cls, upstreams: Iterable[Upstream]) -> ResourceSnapshot:
        """The counts now."""
        return cls(
            tasks=collections.Counter(_kind(task) for task in asyncio.all_tasks() if not _fake_connection(task)),
            descriptors=len(list(Path("/proc/self/fd").iterdir())),
            connections={upstream.provider: established_to(upstream.port) for upstream in upstreams},
            rss_bytes=_rss_bytes(),
        )

    @property
    def descriptors_besides_pool(self) -> int:
        """Open descriptors, less the two sockets (the gateway's and the fake's) of each connection."""
        return self.descriptors - 2 * sum(self.connections.values())

    def grown_tasks(self, before: ResourceSnapshot) -> collections.Counter[str]:
        """The kinds of task there are more of than ``before`` (tasks come and go, kinds should not grow)."""
        return self.tasks - before.tasks


async def settled(upstreams: Iterable[Upstream], before: ResourceSnapshot, within: float = 2.0) -> None:
    """Wait until no fake has a response open and the task count is back to ``before``'s, or ``within`` passes.

    Returns either way: the caller's assertions say what did not settle.
    """
    upstreams = list(upstreams)
    try:
        await until(lambda: all(upstream.server.open_streams == 0 for upstream in upstreams), within)
        await until(lambda: ResourceSnapshot.take(upstreams).tasks.total() <= before.tasks.total(), within)
    except TimeoutError:
        pass


def established_to(port: int) -> int:
    """ESTABLISHED TCP connections whose remote end is 127.0.0.1:``port`` (a client's side of them)."""
    established = 0
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[3] == _TCP_ESTABLISHED:
            established += 1
    return established


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _fake_connection(task: asyncio.Task[object]) -> bool:
    return _kind(task) == "RequestHandler.start"  # aiohttp's task per accepted connection


def _kind(task: asyncio.Task[object]) -> str:
    coroutine = task.get_coro()
    return getattr(coroutine, "__qualname__", None) or type(coroutine).__name__
