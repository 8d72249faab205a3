"""The Node.js client (clients/node) against a real gateway process: its example, streams, errors, service config,
caller keys.

Without Node.js these tests skip, loudly; in CI (``AIP_CI`` set) they fail instead, so that CI never
passes without having run the Node client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.errors import InvalidRequest, UpstreamRateLimited
from server.errors import status_for
from tests.gateway_process import GatewayProcess, gateway_env, running_gateway
from tests.test_client_keys import ALPHA_KEY, WRONG_KEY, keyed_gateway_env

ROOT = Path(__file__).resolve().parents[1]
NODE_CLIENT = ROOT / "clients" / "node"
# Read at import: the suite's autouse fixture takes every AIP_* variable out of each test's environment.
IN_CI = bool(os.environ.get("AIP_CI"))
# A generous bound for one run of node; the example itself takes about a second.
NODE_TIMEOUT_SECONDS = 30


def _installed_matches_lock() -> bool:
    """Whether node_modules holds exactly what package-lock.json pins (npm's own record of what it installed)."""
    installed = NODE_CLIENT / "node_modules" / ".package-lock.json"
    if not installed.exists():
        return False
    locked = json.loads((NODE_CLIENT / "package-lock.json").read_text(encoding="utf-8"))["packages"]
    recorded: dict[str, Any] = json.loads(installed.read_text(encoding="utf-8"))["packages"]
    return {path: entry for path, entry in locked.items() if path} == recorded


@pytest.fixture(scope="session")
def node() -> Iterator[str]:
    """The node executable, with clients/node's packages installed from its lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = "node" if node is None else "npm"
        if IN_CI:
            pytest.fail(f"Node.js not installed ({missing} not on PATH) with AIP_CI set: run .ci/setup-node.sh first")
        pytest.skip(f"Node.js not installed ({missing} not on PATH): the Node client was NOT tested")
    if not _installed_matches_lock():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--prefer-offline"],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert installed.returncode == 0, f"npm ci failed in {NODE_CLIENT}:\n{installed.stdout}\n{installed.stderr}"
    yield node


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """A `python -m server` with the demo services, run from an empty directory (no .env)."""
    async with running_gateway(gateway_env(), tmp_path) as started:
        yield started


async def _run_node(node: str, *arguments: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run node with ``arguments`` from the repository root: its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        node,
        *arguments,
        cwd=ROOT,
        env=env if env is not None else gateway_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, stdout.decode(), stderr.decode()


async def _node_json(node: str, script: str, *arguments: str, env: dict[str, str] | None = None) -> Any:
    """Run ``script`` (which requires the client as ``require(process.argv[1])``) and parse the JSON it prints."""
    code, stdout, stderr = await _run_node(node, "-e", script, str(NODE_CLIENT / "client.js"), *arguments, env=env)
    assert code == 0, f"node failed ({code}):\n{stdout}\n{stderr}"
    return json.loads(stdout)


def _assert_example_output(stdout: str, target: str) -> None:
    lines = stdout.splitlines()
    assert lines[0] == f"target: {target}"
    assert "  echo (chat, provider echo, ready)" in lines
    assert "  echo_workflow (workflow, provider echo_workflow, ready)" in lines
    # Each word is its own streamed message, printed as it came.
    assert "StreamChat echo: hello from Node 你好" in lines
    assert '  chunks: ["hello"," from"," Node"," 你好"]' in lines
    assert "  finish_reason: FINISH_REASON_STOP, usage: 4 in, 4 out" in lines
    # The parameters went out as a Struct and came back as sent: 3 is an integer, not 3.0.
    workflow = lines[lines.index("StreamWorkflow echo_workflow:") + 1 :][:3]
    assert workflow == ['  city: "北京"', "  days: 3", '  End: {"output": {"city": "北京", "days": 3}}']
    not_found = next(line for line in lines if line.startswith("Chat no_such_service: "))
    assert not_found.startswith("Chat no_such_service: NOT_FOUND (5): service_name: no service named 'no_such_service'")
    assert lines[lines.index(not_found) + 1] == "  ErrorInfo reason: SERVICE_NOT_FOUND, domain: aiplatform.v1"
    invalid = next(line for line in lines if line.startswith("StreamChat echo with an unknown parameter: "))
    assert "INVALID_ARGUMENT (3): parameters.colour" in invalid
    assert lines[lines.index(invalid) + 1 : lines.index(invalid) + 3] == [
        "  ErrorInfo reason: INVALID_REQUEST, domain: aiplatform.v1",
        "  BadRequest field: parameters.colour: unknown parameter (this service takes: delay_ms)",
    ]


async def test_example_lists_services_streams_a_chat_and_a_workflow_and_reads_error_details(
    node: str, gateway: GatewayProcess
) -> None:
    code, stdout, stderr = await _run_node(node, "clients/node/example.js", gateway.target)

    assert code == 0, f"example.js failed ({code}):\n{stdout}\n{stderr}"
    _assert_example_output(stdout, gateway.target)


async def test_example_takes_its_target_from_aip_target(node: str, gateway: GatewayProcess) -> None:
    code, stdout, stderr = await _run_node(node, "clients/node/example.js", env=gateway_env(AIP_TARGET=gateway.target))

    assert code == 0, f"example.js failed ({code}):\n{stdout}\n{stderr}"
    _assert_example_output(stdout, gateway.target)


async def test_example_exits_non_zero_when_a_call_fails_unexpectedly(node: str, tmp_path: Path) -> None:
    async with running_gateway(gateway_env(AIP_DEMO_SERVICES="false"), tmp_path) as without_demos:
        code, stdout, stderr = await _run_node(node, "clients/node/example.js", without_demos.target)

    assert code == 1, stdout
    assert "  echo (chat" not in stdout
    assert stderr.startswith("example failed: NOT_FOUND: service_name: no service named 'echo'"), stderr


async def test_breaking_out_of_a_stream_cancels_the_call(node: str, gateway: GatewayProcess) -> None:
    script = """
    const { AIPlatformClient } = require(process.argv[1]);
    (async () => {
      const client = new AIPlatformClient(process.argv[2]);
      const started = Date.now();
      const call = client.streamChat({
        service_name: 'echo',
        messages: [{ role: 'user', content: 'w0 w1 w2 w3 w4 w5 w6 w7 w8 w9' }],
        parameters: { delay_ms: 500 },
      });
      const status = new Promise((resolve) => call.on('status', resolve));
      const received = [];
      for await (const message of call) { received.push(message.delta); break; }
      const { code, details } = await status;
      console.log(JSON.stringify({ received, code, details, elapsedMs: Date.now() - started }));
      client.close();
    })();
    """
    result = await _node_json(node, script, gateway.target)

    assert result["received"] == ["w0"]
    assert result["code"] == 1, result  # CANCELLED; the whole stream would have ended OK after 5 s
    assert result["details"] == "Cancelled on client"
    assert result["elapsedMs"] < 4000


async def test_chat_run_workflow_and_resume_workflow_reach_the_gateway(node: str, gateway: GatewayProcess) -> None:
    script = """
    const { AIPlatformClient, statusDetails } = require(process.argv[1]);
    (async () => {
      const client = new AIPlatformClient(process.argv[2]);
      const options = { timeoutMs: 10000, metadata: { 'x-request-id': 'node-test-1' } };
      const messages = [{ role: 'user', content: 'a whole answer' }];
      const chat = await client.chat({ service_name: 'echo', messages }, options);
      const parameters = { city: '北京', days: 3, ok: true, none: null, list: [1, 'x'] };
      const run = await client.runWorkflow({ service_name: 'echo_workflow', parameters });
      let resume;
      try {
        const request = { service_name: 'echo_workflow', event_id: 'e-1', resume_data: 'yes', interrupt_type: 2 };
        for await (const event of client.resumeWorkflow(request)) {}
      } catch (error) {
        resume = statusDetails(error);
      }
      console.log(JSON.stringify({ chat, run, resume }));
      client.close();
    })();
    """
    result = await _node_json(node, script, gateway.target)

    chat, run, resume = result["chat"], result["run"], result["resume"]
    assert (chat["content"], chat["finish_reason"]) == ("a whole answer", "FINISH_REASON_STOP")
    assert chat["usage"] == {
        "input_tokens": 3,
        "output_tokens": 3,
        "total_tokens": 6,
        "source": "USAGE_SOURCE_REPORTED",
    }
    assert json.loads(run["output"]) == {
        "output": {"city": "北京", "days": 3, "ok": True, "none": None, "list": [1, "x"]}
    }
    assert (run["execute_id"], run["interrupt"]) == ("echo", None)
    # echo_workflow never interrupts: the gateway refuses to resume it, naming the field.
    assert (resume["codeName"], resume["errorInfo"]["reason"]) == ("INVALID_ARGUMENT", "INVALID_REQUEST")
    assert resume["badRequest"]["field_violations"][0]["field"] == "service_name"


@pytest.fixture
async def keyed_gateway(tmp_path: Path) -> AsyncIterator[GatewayProcess]:
    """A `python -m server` with the demo services and caller keys (``keyed_gateway_env``)."""
    async with running_gateway(keyed_gateway_env(tmp_path), tmp_path) as started:
        yield started


async def test_example_sends_aip_api_key_to_a_gateway_with_keys_and_is_refused_without_it(
    node: str, keyed_gateway: GatewayProcess
) -> None:
    example = ("clients/node/example.js", keyed_gateway.target)
    code, stdout, stderr = await _run_node(node, *example, env=gateway_env(AIP_API_KEY=ALPHA_KEY))
    assert code == 0, f"example.js failed ({code}):\n{stdout}\n{stderr}"
    _assert_example_output(stdout, keyed_gateway.target)

    code, stdout, stderr = await _run_node(node, *example)
    assert code == 1, stdout
    assert stderr.startswith("example failed: UNAUTHENTICATED: a caller key is required"), stderr


_KEYS_SCRIPT = """
const util = require('node:util');
const { AIPlatformClient, statusDetails } = require(process.argv[1]);
const [target, key, wrongKey] = process.argv.slice(2);
const chat = { service_name: 'echo', messages: [{ role: 'user', content: 'a b c' }] };

/** What a call gave, or its status and every way its error can be printed. */
async function outcome(call) {
  try {
    return { ok: await call() };
  } catch (error) {
    const status = statusDetails(error);
    return { codeName: status.codeName, message: status.message, shown: [String(error), util.inspect(error)] };
  }
}

async function deltas(stream) {
  const received = [];
  for await (const message of stream) received.push(message.delta);
  return received;
}

(async () => {
  const keyed = new AIPlatformClient(target, { apiKey: key });
  const fromEnvironment = new AIPlatformClient(target); // AIP_API_KEY
  const without = new AIPlatformClient(target, { apiKey: '' }); // none, whatever AIP_API_KEY says
  const wrong = new AIPlatformClient(target, { apiKey: wrongKey });
  let invalid = null;
  try {
    new AIPlatformClient(target, { apiKey: 'aip_secret\\nnext-line' });
  } catch (error) {
    invalid = String(error);
  }
  console.log(JSON.stringify({
    services: await outcome(async () => (await keyed.listServices()).services.map((service) => service.name)),
    chat: await outcome(async () => (await keyed.chat(chat)).content),
    stream: await outcome(() => deltas(keyed.streamChat(chat))),
    fromEnvironment: await outcome(() => deltas(fromEnvironment.streamChat(chat))),
    without: await outcome(() => without.chat(chat)),
    wrongChat: await outcome(() => wrong.chat(chat)),
    wrongStream: await outcome(() => deltas(wrong.streamChat(chat))),
    clients: [util.inspect(keyed, { depth: 3 }), util.inspect(wrong, { depth: 3 }), JSON.stringify(keyed.target)],
    invalid,
  }));
  for (const client of [keyed, fromEnvironment, without, wrong]) client.close();
})();
"""


async def test_api_key_goes_with_unary_and_streaming_calls_and_shows_nowhere(
    node: str, keyed_gateway: GatewayProcess
) -> None:
    result = await _node_json(
        node, _KEYS_SCRIPT, keyed_gateway.target, ALPHA_KEY, WRONG_KEY, env=gateway_env(AIP_API_KEY=ALPHA_KEY)
    )

    assert result["services"]["ok"] == ["coze", "coze_chatflow", "coze_workflow", "echo", "echo_workflow", "openai"]
    assert result["chat"] == {"ok": "a b c"}
    assert result["stream"] == {"ok": ["a", " b", " c", ""]}
    assert result["fromEnvironment"] == {"ok": ["a", " b", " c", ""]}
    assert result["without"]["codeName"] == "UNAUTHENTICATED"
    assert result["without"]["message"].startswith("a caller key is required")
    for refused in (result["wrongChat"], result["wrongStream"]):
        assert (refused["codeName"], refused["message"]) == ("UNAUTHENTICATED", "the caller key is not valid")
        assert not [shown for shown in refused["shown"] if WRONG_KEY in shown]
    assert not [shown for shown in result["clients"] if ALPHA_KEY in shown or WRONG_KEY in shown]
    assert "printable ASCII" in result["invalid"]
    assert "secret" not in result["invalid"]


_WAIT_SCRIPT = """
const { AIPlatformClient, statusDetails } = require(process.argv[1]);
const serviceConfig = process.argv[3] === 'none' ? null : undefined;
(async () => {
  const client = new AIPlatformClient(process.argv[2], { serviceConfig });
  const started = Date.now();
  try {
    await client.listServices({}, { timeoutMs: 1000 });
    console.log(JSON.stringify({ codeName: 'OK' }));
  } catch (error) {
    console.log(JSON.stringify({ ...statusDetails(error), elapsedMs: Date.now() - started }));
  }
  client.close();
})();
"""


async def test_the_service_config_makes_calls_wait_for_the_gateway_until_their_deadline(node: str) -> None:
    target = f"127.0.0.1:{_closed_port()}"

    waited = await _node_json(node, _WAIT_SCRIPT, target, "default")
    failed_fast = await _node_json(node, _WAIT_SCRIPT, target, "none")

    # clients/service_config.json says waitForReady: the call waits out its 1 s deadline.
    assert waited["codeName"] == "DEADLINE_EXCEEDED", waited
    assert waited["elapsedMs"] >= 900
    # Without a service config grpc-js fails the call as soon as the connection is refused.
    assert failed_fast["codeName"] == "UNAVAILABLE", failed_fast
    assert failed_fast["errorInfo"] is None


async def test_decode_status_reads_the_details_the_gateway_sends(node: str) -> None:
    # The very trailers server/errors.py builds: ErrorInfo with the upstream's facts and RetryInfo,
    # and ErrorInfo with BadRequest.
    rate_limited = UpstreamRateLimited(
        "coze: too many requests", provider="coze", upstream_code="4013", log_id="log-1", retry_after_seconds=1.5
    )
    trailers = [
        _status_details_bin(status_for(error).trailing_metadata)
        for error in (rate_limited, InvalidRequest("messages[0].content", "must not be empty"))
    ]
    script = """
    const { decodeStatus } = require(process.argv[1]);
    console.log(JSON.stringify(process.argv.slice(2).map((text) => decodeStatus(Buffer.from(text, 'base64')))));
    """

    limited, invalid = await _node_json(node, script, *(base64.b64encode(t).decode() for t in trailers))

    assert (limited["code"], limited["codeName"]) == (8, "RESOURCE_EXHAUSTED")
    assert limited["message"].startswith("coze: too many requests")
    assert limited["errorInfo"]["reason"] == "UPSTREAM_RATE_LIMITED"
    assert limited["errorInfo"]["domain"] == "aiplatform.v1"
    assert limited["errorInfo"]["metadata"] == {"provider": "coze", "upstream_code": "4013", "log_id": "log-1"}
    assert limited["retryInfo"]["retry_delay"] == {"seconds": 1, "nanos": 500_000_000}
    assert limited["badRequest"] is None
    assert [detail["@type"] for detail in limited["details"]] == ["google.rpc.ErrorInfo", "google.rpc.RetryInfo"]
    assert (invalid["codeName"], invalid["errorInfo"]["reason"]) == ("INVALID_ARGUMENT", "INVALID_REQUEST")
    assert invalid["badRequest"]["field_violations"][0]["field"] == "messages[0].content"
    assert invalid["badRequest"]["field_violations"][0]["description"] == "must not be empty"
    assert invalid["retryInfo"] is None


def _status_details_bin(trailing_metadata: tuple[tuple[str, str | bytes], ...]) -> bytes:
    value = dict(trailing_metadata)["grpc-status-details-bin"]
    assert isinstance(value, bytes)
    return value


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
