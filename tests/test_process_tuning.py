"""The gateway's start-up measures on its own process: room for its descriptors, a tuned collector."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

from server.process import descriptors_needed, make_room_for_descriptors
from tests.gateway_process import gateway_env, running_gateway


def _status_field(pid: int | str, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def _open_file_limit(pid: int | str) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text(encoding="ascii").splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-file limit in /proc/{pid}/limits")


def test_room_is_made_at_once_for_the_descriptors_asked_for() -> None:
    # The table (FDSize) is grown now, so opening the 2,048th descriptor later does not wait for
    # the kernel to grow it; nothing is left open.
    open_before = len(os.listdir("/proc/self/fd"))
    needed = max(4_096, _status_field("self", "FDSize") * 2)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[1] >= needed, "this machine's hard limit is too low to test"
    room = make_room_for_descriptors(needed)
    assert room == needed
    assert _status_field("self", "FDSize") >= needed
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= needed
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_a_hard_limit_below_the_need_is_said_and_does_not_stop_the_start() -> None:
    script = textwrap.dedent(
        """
        import logging, resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300))
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(message)s")
        from server.process import make_room_for_descriptors
        print("room", make_room_for_descriptors(13_024))
        print("soft", resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=Path(__file__).parent.parent
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "room 300" in lines and "soft 300" in lines  # raised to the hard limit, no further
    (warning,) = [line for line in lines if line.startswith("WARNING")]
    assert "open-file limit (300) is below the 13024 descriptors" in warning and "ulimit -Hn" in warning


async def test_the_gateway_process_starts_with_room_for_its_calls(tmp_path: Path) -> None:
    env = gateway_env(AIP_MAX_CALLS_IN_FLIGHT="3000")
    async with running_gateway(env, tmp_path) as started:
        needed = descriptors_needed(3000)
        match = await started.find_in_log(rb"file descriptors: room for (\d+)")  # said once it is done
        assert int(match.group(1)) == needed
        assert _open_file_limit(started.pid) >= min(needed, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        assert _status_field(started.pid, "FDSize") >= needed
