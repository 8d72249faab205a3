"""One gateway, called as its users call it: Python, Node.js, Go, grpcurl and the CLI.

The gateway runs as ``python -m server`` with two workers, metrics and JSON logs; every client's
calls show in ``/metrics`` (summed over both workers) and in the access log, with the request id
the gateway returned.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiplatform.v1 import aiplatform_pb2 as pb
from clients import AsyncAIPlatformClient
from tests.fakes.openai import FakeOpenAI
from tests.gateway_process import GatewayProcess
from tests.test_go_client import go_example  # noqa: F401  (a fixture: the example, built once)
from tests.test_node_client import node  # noqa: F401  (a fixture: node, with the client's packages)
from tests.test_observability import _scrape, observed_gateway

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "aiplatform.v1.AIPlatformService"
BIN = Path(sys.executable).parent


def _calls_handled(samples: dict[Any, float]) -> float:
    """Every AIPlatformService call the gateway ended, whatever its method and code."""
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "grpc_server_handled_total" and ("grpc_service", SERVICE) in labels
    )


async def _run(*command: str, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, f"{command[0]} exited {process.returncode}:\n{stdout.decode()}\n{stderr.decode()}"
    return stdout.decode() + stderr.decode()


async def _access_lines(log: list[bytes]) -> list[dict[str, Any]]:
    await asyncio.sleep(0.3)  # the workers' last lines reach the pipe
    lines = [json.loads(line) for line in log if line.startswith(b"{")]
    return [line for line in lines if line["logger"] == "aiplatform.access" and line["grpc_service"] == SERVICE]


async def test_calls_from_python_node_go_grpcurl_and_the_cli_show_in_metrics_and_the_access_log(
    tmp_path: Path,
    node: str,  # noqa: F811
    go_example: Path,  # noqa: F811
) -> None:
    async with (
        FakeOpenAI() as upstream,
        observed_gateway(tmp_path, upstream, AIP_WORKERS="2", AIP_LOG_FORMAT="json") as (gateway, port),
        gateway.collected_log() as log,
    ):
        handled = [_calls_handled(await _scrape(port))]

        async def after(client: str) -> None:
            handled.append(_calls_handled(await _scrape(port)))
            assert handled[-1] > handled[-2], f"{client}'s calls are not in /metrics"

        await _python_client(gateway)
        await after("Python")
        await _run(node, "clients/node/example.js", gateway.target)
        await after("Node.js")
        await _run(str(go_example), f"-target={gateway.target}")
        await after("Go")
        grpcurl = await _run(
            str(BIN / "grpcurl"),
            "-plaintext",
            "-v",
            "-H",
            "x-request-id: from-grpcurl-1",
            "-d",
            '{"service_name":"echo","messages":[{"role":"user","content":"hi"}]}',
            gateway.target,
            f"{SERVICE}/StreamChat",
        )
        await after("grpcurl")
        await _run(str(BIN / "aiplatform"), "--target", gateway.target, "chat", "echo", "from the CLI")
        await after("the CLI")
        access = await _access_lines(log)

    assert "x-request-id: from-grpcurl-1" in grpcurl  # returned in the response headers
    ids = {line["request_id"] for line in access}
    assert {"from-python-1", "from-grpcurl-1"} <= ids
    # Every call the metrics counted has its access line, whichever worker served it.
    assert len(access) == handled[-1] - handled[0]


async def _python_client(gateway: GatewayProcess) -> None:
    async with AsyncAIPlatformClient(gateway.target, metadata=(("x-request-id", "from-python-1"),)) as client:
        answer = await client.chat("echo", [{"role": "user", "content": "from Python"}])
    assert answer.content == "from Python"
    # The id comes back in the initial metadata, to any gRPC caller.
    call = gateway.stub.ListServices(pb.ListServicesRequest())
    await call
    assert len(dict(await call.initial_metadata())["x-request-id"]) == 32
