"""`python -m server` as a user starts it, for tests: the environment, the bound port, the exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from tests.conftest import ENVIRONMENT_PREFIXES

_LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")


def gateway_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the gateway's variables, a free port, and ``overrides``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENVIRONMENT_PREFIXES)}
    env.update({"AIP_ADDRESS": "127.0.0.1:0", **overrides})
    return env


class GatewayProcess:
    """A running `python -m server`, with the port it bound."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, startup_log: list[bytes]) -> None:
        self.process = process
        self.port = port
        self.target = f"127.0.0.1:{port}"
        #: The log lines read while waiting for it to listen.
        self.startup_log = startup_log
        self._channel: grpc.aio.Channel | None = None
        #: The options `channel` opens its channel with (`running_gateway`'s ``channel_options``).
        self.channel_options: Sequence[tuple[str, Any]] = ()

    @property
    def channel(self) -> grpc.aio.Channel:
        """A channel to the gateway, opened on first use and closed by `running_gateway` (as `GatewayUnderTest`'s)."""
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.target, options=list(self.channel_options))
        return self._channel

    @property
    def stub(self) -> pb_grpc.AIPlatformServiceStub:
        return pb_grpc.AIPlatformServiceStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    async def close_channel(self) -> None:
        """Close the channel `channel` opened, if any."""
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def find_in_log(self, pattern: bytes) -> re.Match[bytes]:
        """The first match of ``pattern`` in the log, from its start (the startup lines included)."""
        for line in self.startup_log:
            if match := re.search(pattern, line):
                return match
        return (await self.read_until(pattern))[0]

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """The process's resident set size now."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for process {self.pid}")

    @asynccontextmanager
    async def collected_log(self) -> AsyncIterator[list[bytes]]:
        """The log lines written during the block, read as they come (a full pipe would stall the gateway)."""
        assert self.process.stdout is not None
        stdout = self.process.stdout
        lines: list[bytes] = []

        async def read() -> None:
            while line := await stdout.readline():
                lines.append(line)

        reader = asyncio.create_task(read())
        try:
            yield lines
        finally:
            await asyncio.sleep(0.2)  # the last lines written before the block ended
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def read_until(self, pattern: bytes, count: int = 1) -> list[re.Match[bytes]]:
        """Read the log until ``pattern`` matched ``count`` lines (after the first listening line)."""
        assert self.process.stdout is not None
        matches: list[re.Match[bytes]] = []
        async with asyncio.timeout(30):
            while len(matches) < count:
                line = await self.process.stdout.readline()
                assert line, f"the gateway exited (code {await self.process.wait()})"
                if match := re.search(pattern, line):
                    matches.append(match)
        return matches


async def start_gateway(env: dict[str, str], cwd: Path) -> GatewayProcess:
    """Start `python -m server` and wait until it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[bytes] = []
    async with asyncio.timeout(30):
        while line := await process.stdout.readline():
            lines.append(line)
            if match := _LISTENING.search(line):
                return GatewayProcess(process, int(match.group(1)), lines)
    raise AssertionError(f"the gateway exited before listening (code {await process.wait()})")


@asynccontextmanager
async def running_gateway(
    env: dict[str, str], cwd: Path, *, channel_options: Sequence[tuple[str, Any]] = ()
) -> AsyncIterator[GatewayProcess]:
    """A gateway process for the block (``.target``, ``.channel``, ``.stub`` as `tests.harness.gateway_for`'s).

    At the end its channel is closed, then the process stopped if the test did not stop it.
    """
    started = await start_gateway(env, cwd)
    started.channel_options = channel_options
    try:
        yield started
    finally:
        await started.close_channel()
        if started.process.returncode is None:
            # SIGTERM first: with AIP_WORKERS the parent stops its workers (a killed parent would
            # leave them running, holding the log pipe open).
            started.process.terminate()
            try:
                await asyncio.wait_for(started.process.wait(), 20)
            except TimeoutError:
                started.process.kill()
                await started.process.wait()


async def failed_start(env: dict[str, str], cwd: Path) -> tuple[int, list[str]]:
    """Run `python -m server` expecting it to refuse to start: its exit code and stderr lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, stderr.decode().strip().splitlines()
