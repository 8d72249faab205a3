"""A private redis-server for tests, on 127.0.0.1 and a port of its own, that a test can stop and start again.

`running_redis` starts ``redis-server`` (Debian's package; `.ci/setup-redis.sh` installs it) with no
persistence in a directory of its own, waits until it answers PING and yields a `RedisServer`
(``.url``, ``.port``, ``stop()``, ``start()``); a stopped server starts again on the same port, empty,
so a test can check what the gateway does while Redis is down and after it is back. At the end the
process is killed, whatever the test did. conftest's `redis_server` fixture is built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.fakes._server import closed_port

# Read at import: conftest's autouse fixture removes every AIP_* variable before each test.
IN_CI = bool(os.environ.get("AIP_CI"))

HOST = "127.0.0.1"
#: Generous bounds: redis-server starts and stops in milliseconds.
START_TIMEOUT_SECONDS = 10
STOP_TIMEOUT_SECONDS = 10
#: How many free ports to try when another process takes the chosen one before redis-server binds it.
START_ATTEMPTS = 3

_PING = b"*1\r\n$4\r\nPING\r\n"
_PONG = b"+PONG\r\n"


class RedisStartError(Exception):
    """redis-server exited instead of answering PING."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}; its log ends:\n{log}")
        self.log = log


def redis_missing() -> NoReturn:
    """Skip, saying loudly what was not tested; in CI, fail instead."""
    message = "redis-server not on PATH: the Redis tests were NOT run (install it with .ci/setup-redis.sh)"
    if IN_CI:
        pytest.fail(f"{message}; AIP_CI is set and CI never skips", pytrace=False)
    pytest.skip(message)


async def answers_ping(port: int) -> bool:
    """Whether a Redis on 127.0.0.1:``port`` answers PING now."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    try:
        writer.write(_PING)
        await writer.drain()
        return await reader.readline() == _PONG
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class RedisServer:
    """One redis-server process at a time on a fixed port of 127.0.0.1, with no persistence."""

    def __init__(self, executable: str, directory: Path, port: int) -> None:
        self.executable = executable
        self.directory = directory
        self.port = port
        self.url = f"redis://{HOST}:{port}/0"
        #: redis-server's own log, quoted when it fails to start.
        self.log_path = directory / "redis.log"
        #: The last redis-server started (kept after it exits, for its pid and exit code).
        self.process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Start redis-server on `port` and wait until it answers PING.

        Raises:
            RedisStartError: it exited before answering (the port taken, a bad option: its log says which).
            TimeoutError: it did not answer within START_TIMEOUT_SECONDS (it is killed).
        """
        assert not self.running, "redis-server is running already"
        self.process = await asyncio.create_subprocess_exec(
            self.executable,
            *("--port", str(self.port), "--bind", HOST),
            # No RDB snapshots, no append-only file: a restarted server starts empty.
            *("--save", "", "--appendonly", "no"),
            *("--dir", str(self.directory), "--logfile", str(self.log_path)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                while not await answers_ping(self.port):
                    if self.process.returncode is not None:
                        message = f"redis-server on port {self.port} exited (code {self.process.returncode})"
                        raise RedisStartError(message, self._log_tail())
                    await asyncio.sleep(0.01)
        except BaseException:
            await self.kill()
            raise

    async def kill(self) -> None:
        """Kill redis-server at once, if it runs (a crash, and the end of every test)."""
        process = self.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def stop(self) -> None:
        """Stop redis-server (SIGTERM, SIGKILL if it lingers); its clients' connections break."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        # SIGTERM: with nothing to save, redis-server closes its connections and exits at once.
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            await self.kill()

    def _log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@contextlib.asynccontextmanager
async def running_redis(directory: Path) -> AsyncIterator[RedisServer]:
    """A started `RedisServer` for the block, working in ``directory``; killed at the end.

    Skips when redis-server is not installed (fails in CI, see `redis_missing`).
    """
    executable = shutil.which("redis-server")
    if executable is None:
        redis_missing()
    server: RedisServer | None = None
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            server = RedisServer(executable, directory, closed_port())
            try:
                await server.start()
                break
            except RedisStartError as error:
                # Another process bound the free port before redis-server did: try another one.
                if "Address already in use" not in error.log or attempt == START_ATTEMPTS:
                    raise
        assert server is not None
        yield server
    finally:
        if server is not None:
            await server.kill()
