"""AIP_WORKERS: several server processes on one port, each serving connections, stopped together."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
from google.protobuf import struct_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from aiplatform.v1 import aiplatform_pb2_grpc as pb_grpc
from tests.gateway_process import failed_start, gateway_env, start_gateway

HI = [pb.ChatMessage(role="user", content="hello workers")]


def _children(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # The fields after the ")" that ends the command name: state, ppid, ...
            if int(stat.rpartition(")")[2].split()[1]) == parent:
                children.append(int(entry))
    return children


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}/stat")


def _established_server_sockets(pid: int, port: int) -> int:
    """How many accepted connections on ``port`` process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    # grpc listens on an IPv6 socket even for 127.0.0.1 (v4-mapped), so look at both tables.
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rpartition(":")[2], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                count += 1
    return count


async def test_workers_share_one_port_and_stop_together(tmp_path: Path) -> None:
    started = await start_gateway(gateway_env(AIP_WORKERS="2", AIP_GRACE_SECONDS="5"), tmp_path)
    # One "listening" line per worker; start_gateway read the first.
    await started.read_until(rb"listening on 127\.0\.0\.1:", count=1)
    process, port = started.process, started.port
    workers = _children(process.pid)
    try:
        await _check_workers(process, workers, port)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pid in workers:  # a failed check must not leave workers behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not any(_alive(pid) for pid in workers)


async def _check_workers(process: asyncio.subprocess.Process, workers: list[int], port: int) -> None:
    assert len(workers) == 2

    # Many connections (one per channel): the kernel spreads them over both workers.
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(24)
    ]
    try:
        for channel in channels:
            reply = await pb_grpc.AIPlatformServiceStub(channel).Chat(pb.ChatRequest(service_name="echo", messages=HI))
            assert reply.content == "hello workers"
        served = [_established_server_sockets(pid, port) for pid in workers]
        assert sum(served) == len(channels)
        assert all(count > 0 for count in served), served

        # A stream in flight on a worker finishes during the graceful shutdown.
        parameters = struct_pb2.Struct()
        parameters.update({"delay_ms": 100})
        call = pb_grpc.AIPlatformServiceStub(channels[0]).StreamChat(
            pb.StreamChatRequest(
                service_name="echo",
                parameters=parameters,
                messages=[pb.ChatMessage(role="user", content="one two three four five")],
            )
        )
        first = await call.read()
        process.send_signal(signal.SIGTERM)
        rest = []
        while (response := await call.read()) is not grpc.aio.EOF:
            rest.append(response)
        assert "".join(r.delta for r in [first, *rest]) == "one two three four five"
        assert await call.code() == grpc.StatusCode.OK
    finally:
        for channel in channels:
            await channel.close()
    assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_workers_refuse_a_busy_port(tmp_path: Path, target: str) -> None:
    code, lines = await failed_start(gateway_env(AIP_ADDRESS=target, AIP_WORKERS="2"), tmp_path)
    assert code == 1
    assert lines[-1] == (f"aiplatform: cannot listen on {target}: the address is in use or not available")
