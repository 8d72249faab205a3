"""What the benchmark processes share: the per-request load plan, /proc readers, percentiles."""

from __future__ import annotations

import math
import os
import re
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def process_tree(pid: int) -> list[int]:
    """``pid`` and its direct children (the workers of ``AIP_WORKERS=N``), as /proc lists them now."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        try:
            fields = (entry / "stat").read_text(encoding="ascii").rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:  # after the command name: state, then ppid
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` and its live children (all threads), in seconds."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        # After the command name: state is field 3, utime field 14, stime field 15.
        total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of process ``pid`` plus its live children, in KiB.

    For several workers the summed VmHWM is an upper bound: their peaks need not coincide.
    """
    values = {"VmRSS": 0, "VmHWM": 0}
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status", encoding="ascii") as status:
                for line in status:
                    key, _, rest = line.partition(":")
                    if key in values:
                        values[key] += int(rest.split()[0])
        except OSError:
            continue
    return values


def proportional_memory_kib(pid: int) -> int:
    """PSS of process ``pid`` plus its live children, in KiB: shared pages (the workers' copy-on-write
    memory from their parent) counted once in all, unlike summed RSS. Costs a page-table walk: sample it."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/smaps_rollup", encoding="ascii") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


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
