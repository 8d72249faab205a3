"""Every grpcurl command in README.md's code blocks, run as a reader pastes it, against a real gateway.

The commands are read from the README's fenced code blocks (continuation lines joined) and each runs
through ``bash -c`` from the repository root, with `SUBSTITUTIONS` applied to its text and nothing
else. The gateway is ``python -m server`` with the demo services and fake Coze and OpenAI upstreams,
so the Coze and OpenAI examples run too. Each command must match an entry of `EXPECTED` (by RPC and
``service_name``), which says what its output shows and which of the request's values must reach the
upstream; a command the table does not cover fails, and so does an entry that no command uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.fakes.coze import FakeCoze
from tests.fakes.openai import FakeOpenAI
from tests.gateway_process import GatewayProcess, gateway_env, running_gateway

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: A bound for one command; the slowest, the README's slowed-down stream, takes about 1.2 s.
COMMAND_TIMEOUT_SECONDS = 20

#: The README's text → what the test runs instead. Only the address changes: FakeCoze answers any
#: bot or workflow id it has no scenario for normally, and the README's interrupt event id is
#: FakeCoze's (`INTERRUPT_EVENT_ID`), so a reader's ids reach the fakes as written. An id the fakes
#: cannot serve belongs here, mapped to one they can.
SUBSTITUTIONS = {"localhost:50051": "{target}"}


@dataclass(frozen=True)
class Expected:
    """What one README command must do against the test gateway."""

    #: Fragments its stdout must contain (grpcurl prints each response message as JSON).
    output: tuple[str, ...]
    #: Which fake must have received the call, and at what path.
    upstream: tuple[str, str] | None = None
    #: Dotted paths in the command's request JSON → dotted paths in the upstream request's JSON body
    #: that must hold the same value.
    forwarded: dict[str, str] = field(default_factory=dict)
    #: A fragment of grpcurl's stderr when the README shows the command failing (exit code ≠ 0).
    error: str | None = None


#: Keyed by ``"<RPC> <service_name>"`` (or just the RPC, or grpcurl's verb, when there is no service).
EXPECTED: dict[str, Expected] = {
    "aiplatform.v1.AIPlatformService/ListServices": Expected(
        output=('"name": "echo"', '"name": "coze"', '"name": "openai"', '"ready": true')
    ),
    "aiplatform.v1.AIPlatformService/Chat echo": Expected(output=('"content": "hello there"',)),
    "aiplatform.v1.AIPlatformService/StreamChat echo": Expected(
        output=('"delta": ', '"finish_reason": "FINISH_REASON_STOP"')
    ),
    "aiplatform.v1.AIPlatformService/RunWorkflow echo_workflow": Expected(output=('"output": ', "北京")),
    "aiplatform.v1.AIPlatformService/StreamWorkflow echo_workflow": Expected(output=('"node_title": "End"', "北京")),
    "aiplatform.v1.AIPlatformService/StreamChat coze": Expected(
        output=('"delta": ', '"finish_reason": "FINISH_REASON_STOP"', '"conversation_id": '),
        upstream=("coze", "/v3/chat"),
        forwarded={"parameters.bot_id": "bot_id", "user_id": "user_id"},
    ),
    "aiplatform.v1.AIPlatformService/StreamWorkflow coze_workflow": Expected(
        output=('"node_title": "End"',),
        upstream=("coze", "/v1/workflow/stream_run"),
        forwarded={"workflow_id": "workflow_id", "parameters.city": "parameters.city"},
    ),
    "aiplatform.v1.AIPlatformService/ResumeWorkflow coze_workflow": Expected(
        output=('"node_title": "End"', "上海"),
        upstream=("coze", "/v1/workflow/stream_resume"),
        forwarded={
            "workflow_id": "workflow_id",
            "event_id": "event_id",
            "interrupt_type": "interrupt_type",
            "resume_data": "resume_data",
        },
    ),
    "aiplatform.v1.AIPlatformService/StreamChat openai": Expected(
        output=('"delta": ', '"finish_reason": "FINISH_REASON_STOP"'),
        upstream=("openai", "/v1/chat/completions"),
        forwarded={"parameters.model": "model", "parameters.temperature": "temperature"},
    ),
    "aiplatform.v1.AIPlatformService/StreamChat coze_chatflow": Expected(
        output=('"delta": ', '"finish_reason": "FINISH_REASON_STOP"', '"conversation_id": '),
        upstream=("coze", "/v1/workflows/chat"),
        forwarded={
            "parameters.workflow_id": "workflow_id",
            "parameters.app_id": "app_id",
            "parameters.parameters.city": "parameters.city",
        },
    ),
    "grpc.health.v1.Health/Check": Expected(output=('"status": "SERVING"',)),
    "list": Expected(output=("aiplatform.v1.AIPlatformService", "grpc.health.v1.Health")),
}

# --- reading the README -----------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_GRPCURL = re.compile(r"(^|[\s;&|(])(\S*/)?grpcurl\s")
#: The grpcurl flags a README command might use that take a value (grpcurl's others are booleans).
_VALUE_FLAGS = {
    "-d",
    "-H",
    "-rpc-header",
    "-reflect-header",
    "-max-time",
    "-connect-timeout",
    "-format",
    "-authority",
    "-proto",
    "-protoset",
    "-import-path",
}


@dataclass(frozen=True)
class ReadmeCommand:
    """One grpcurl command as the README shows it."""

    line: int  # the README line it starts on
    text: str  # as written, continuation lines included

    @property
    def arguments(self) -> list[str]:
        """The words after `grpcurl`, as a shell would split them."""
        words = shlex.split(self.text.replace("\\\n", " "), comments=True)
        start = next((index for index, word in enumerate(words) if word.rsplit("/", 1)[-1] == "grpcurl"), -1)
        return words[start + 1 :]

    @property
    def request(self) -> dict[str, Any]:
        """The ``-d`` JSON, or {} when there is none."""
        arguments = [*self.arguments, ""]
        for index, word in enumerate(arguments[:-1]):
            if word == "-d" or word.startswith("-d="):
                data = word.removeprefix("-d=") if word != "-d" else arguments[index + 1]
                # Not JSON (e.g. `-d @`, stdin): no service_name, so no EXPECTED entry, and the test says so.
                with contextlib.suppress(ValueError):
                    value = json.loads(data)
                    return value if isinstance(value, dict) else {}
        return {}

    @property
    def key(self) -> str:
        """``"<RPC> <service_name>"``: the `EXPECTED` entry this command must match."""
        positional: list[str] = []
        arguments = iter(self.arguments)
        for word in arguments:
            if word in _VALUE_FLAGS:
                next(arguments, None)
            elif not word.startswith("-"):
                positional.append(word)
        # grpcurl [flags] ADDRESS [list|describe [SYMBOL] | METHOD]
        verb = " ".join(positional[1:]) or "(no method)"
        service = self.request.get("service_name")
        return f"{verb} {service}" if service else verb


def readme_commands() -> list[ReadmeCommand]:
    """Every grpcurl command in README.md's fenced code blocks."""
    commands: list[ReadmeCommand] = []
    in_block = False
    lines = README.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if _FENCE.match(line):
            in_block = not in_block
            continue
        if not in_block or line.lstrip().startswith("#") or not _GRPCURL.search(line + " "):
            continue
        start = index
        text = [line]
        while text[-1].endswith("\\") and index < len(lines):
            text.append(lines[index])
            index += 1
        commands.append(ReadmeCommand(line=start, text="\n".join(text)))
    return commands


COMMANDS = readme_commands()


def _substituted(command: ReadmeCommand, target: str) -> str:
    text = command.text
    for old, new in SUBSTITUTIONS.items():
        text = text.replace(old, new.format(target=target))
    return text


def _at(document: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        assert isinstance(document, dict) and part in document, f"no {dotted!r} in {document!r}"
        document = document[part]
    return document


# --- the gateway ------------------------------------------------------------------------------


@dataclass
class ReadmeGateway:
    process: GatewayProcess
    upstreams: dict[str, FakeCoze | FakeOpenAI]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReadmeGateway]:
    """``python -m server`` with the demo services, Coze and OpenAI on fakes, from an empty directory."""
    async with FakeCoze() as coze, FakeOpenAI() as openai:
        env = gateway_env(
            COZE_API_TOKEN=coze.token,
            COZE_API_BASE=coze.base_url,
            OPENAI_API_KEY=openai.api_key,
            OPENAI_BASE_URL=openai.base_url,
        )
        # The log is read as it comes: a gateway writing to a full pipe would stall.
        async with running_gateway(env, tmp_path_factory.mktemp("gateway")) as process, process.collected_log():
            yield ReadmeGateway(process, {"coze": coze, "openai": openai})


# --- the tests --------------------------------------------------------------------------------


def test_the_readme_has_grpcurl_commands() -> None:
    assert len(COMMANDS) >= 10, f"found only {len(COMMANDS)} grpcurl commands in README.md: is the reader broken?"


def test_every_expected_entry_is_used_by_a_readme_command() -> None:
    unused = set(EXPECTED) - {command.key for command in COMMANDS}
    assert not unused, f"EXPECTED entries no README command uses (remove them): {sorted(unused)}"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("command", COMMANDS, ids=[f"README.md:{command.line} {command.key}" for command in COMMANDS])
async def test_readme_command(command: ReadmeCommand, gateway: ReadmeGateway) -> None:
    expected = EXPECTED.get(command.key)
    assert expected is not None, (
        f"README.md line {command.line} has a grpcurl command no EXPECTED entry covers "
        f"(key {command.key!r}): add one to {Path(__file__).name}\n{command.text}"
    )
    for upstream in gateway.upstreams.values():
        upstream.forget()
    script = _substituted(command, gateway.process.target)
    # Not at the test gateway, it would call whatever listens there (a developer's `make run`).
    assert gateway.process.target in script, f"README.md line {command.line} does not call localhost:50051"
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        cwd=ROOT,
        env=gateway_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout_bytes, stderr_bytes = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_SECONDS)
    stdout, stderr = stdout_bytes.decode(), stderr_bytes.decode()
    ran = f"README.md line {command.line}, run as:\n{script}\nexit code {process.returncode}\n{stdout}\n{stderr}"

    if expected.error is not None:
        assert process.returncode != 0, f"expected the error {expected.error!r}; {ran}"
        assert expected.error in stderr, ran
    else:
        assert process.returncode == 0, ran
    for fragment in expected.output:
        assert fragment in stdout, f"{fragment!r} not in the output; {ran}"

    if expected.upstream is not None:
        name, path = expected.upstream
        received = [request for request in gateway.upstreams[name].requests if request.path == path]
        assert received, f"fake {name} received no {path}; {ran}"
        body = received[-1].json
        for source, destination in expected.forwarded.items():
            assert _at(body, destination) == _at(command.request, source), f"{source} did not reach {name}; {ran}"
