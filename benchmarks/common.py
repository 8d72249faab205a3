"""What the benchmark processes share: the per-request load plan, /proc readers, percentiles."""

from __future__ import annotations

import math
import os
import re
import resource
from collections.abc import Sequence
from dataclasses import dataclass

_PLAN = re.compile(r"^tokens-(\d+)-delay-(\d+)$")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Plan:
    """What the fake upstream streams for one request: ``tokens`` deltas, ``delay_ms`` apart."""

    tokens: int
    delay_ms: int

    @property
    def name(self) -> str:
        """The model name / bot id that asks the fake upstream for this plan."""
        return f"tokens-{self.tokens}-delay-{self.delay_ms}"

    @classmethod
    def parse(cls, name: str, default: Plan | None = None) -> Plan:
        """The plan a model name or bot id such as ``tokens-50-delay-0`` asks for."""
        match = _PLAN.match(name)
        if match is None:
            return default or Plan(50, 0)
        return cls(int(match.group(1)), int(match.group(2)))


def token_text(index: int) -> str:
    """The text of the ``index``-th token; short, like a real model's tokens."""
    return f"t{index} "


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads, living and exited), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    # After the command name: state is field 3, utime field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of process ``pid``, in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile (``fraction`` 0.5 for p50, 0.99 for p99); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (many streams need many sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
