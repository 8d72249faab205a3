"""The ``aiplatform`` command against a real gateway: through ``main()`` in-process and as the installed script.

The gateway runs on the test's event loop, so ``main()`` runs in a worker thread and the script as an asyncio
subprocess. Coze workflows go to the fake Coze, whose ``wf-interrupt`` workflow stops at a question.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import shlex
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from aiplatform.v1 import aiplatform_pb2 as pb
from clients.cli import (
    EXIT_CANCELLED,
    EXIT_OK,
    EXIT_USAGE,
    EXIT_WAITING_FOR_INPUT,
    main,
    parse_value,
)
from tests.fakes import coze as fake

SCRIPT = Path(sys.executable).parent / "aiplatform"
# Exit codes of failed calls: 10 + the gRPC status code's number.
EXIT_INVALID_ARGUMENT = 13
EXIT_DEADLINE_EXCEEDED = 14
EXIT_NOT_FOUND = 15
EXIT_UNAVAILABLE = 24
# What the fake's resumed workflow outputs for the answer 上海 (its JSON text, passed through as is).
RESUMED_OUTPUT = '{"output":"上海：晴，25°C"}'


class _Terminal(io.StringIO):
    """Standard input that says it is a terminal, with the user's typing in it."""

    def isatty(self) -> bool:
        return True


async def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in a worker thread: its exit code, stdout and stderr."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Standard input that is no terminal; write to it before calling ``main``."""
    replacement = io.StringIO()
    monkeypatch.setattr(sys, "stdin", replacement)
    yield replacement


def script_env(**variables: str) -> dict[str, str]:
    """The environment for the installed script: this one (the gateway's variables are gone) plus ``variables``."""
    assert SCRIPT.exists(), f"{SCRIPT} is missing: run `.venv/bin/pip install -e '.[dev]'`"
    # Without PYTHONUNBUFFERED, as users run it: tokens must arrive because the command flushes them.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    return {**env, **variables}


@contextlib.contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """While the block starts a process, SIGINT is not ignored here, so that the process does not ignore it either.

    A job started in the background of a non-interactive shell has SIGINT ignored, Python keeps it so, and a child
    inherits it: the script would never see the Ctrl-C a test sends it. (A ``preexec_fn`` would do the same in the
    child, but forks a process whose gRPC threads are running.)
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.asynccontextmanager
async def running_script(*argv: str, env: dict[str, str], stdin: int | None = None) -> AsyncIterator[Any]:
    """The installed script running ``argv``; killed at the end if it is still running."""
    with _sigint_not_ignored():
        process = await asyncio.create_subprocess_exec(
            str(SCRIPT),
            *argv,
            env=env,
            stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_until(stream: asyncio.StreamReader, text: str) -> str:
    """What ``stream`` sends until ``text`` appears in it (at most 10 s)."""
    received = b""
    async with asyncio.timeout(10):
        while text not in received.decode(errors="replace"):
            chunk = await stream.read(4096)
            assert chunk, f"the stream ended before {text!r}; got {received!r}"
            received += chunk
    return received.decode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- -p values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3", 3),
        ("0.2", 0.2),
        ("true", True),
        ("null", None),
        ('{"a": [1, "x"]}', {"a": [1, "x"]}),
        ("[1, 2]", [1, 2]),
        ('"3"', "3"),
        ("北京", "北京"),
        ("hello world", "hello world"),
        ("", ""),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("7379462189365198898", "7379462189365198898"),  # a Coze bot id: a double would change its digits
        (str(2**53 - 1), 2**53 - 1),
    ],
)
def test_parameter_values_are_json_when_they_parse_and_text_otherwise(raw: str, expected: Any) -> None:
    value = parse_value(raw)
    assert value == expected
    assert type(value) is type(expected)


async def test_parameters_reach_the_service_with_their_json_types(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_main(
        capsys,
        "workflow",
        "echo_workflow",
        "--target",
        target,
        "--no-stream",
        "-p",
        "days=3",
        "-p",
        'opts={"a": [1, "x"]}',
        "-p",
        "city=北京",
        "-p",
        'quoted="3"',
    )
    assert (code, err) == (EXIT_OK, "")
    assert json.loads(out) == {"output": {"city": "北京", "days": 3, "opts": {"a": [1, "x"]}, "quoted": "3"}}


async def test_a_parameter_of_the_wrong_type_is_the_gateways_invalid_argument(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_main(capsys, "chat", "echo", "hi", "--target", target, "-p", "delay_ms=soon")
    assert code == EXIT_INVALID_ARGUMENT
    assert out == ""
    assert err.splitlines() == [err.strip()]
    assert err.startswith("aiplatform: INVALID_ARGUMENT: parameters.delay_ms")
    assert err.rstrip().endswith("(reason INVALID_REQUEST)")


@pytest.mark.parametrize(
    "parameter",
    ["no-equals-sign", "=3", 'deep={"id": 12345678901234567890}'],
    ids=["no-equals-sign", "no-key", "inexact-nested-integer"],
)
async def test_a_parameter_the_client_cannot_send_is_a_usage_error(
    parameter: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No gateway listens here: the command must stop before it calls.
    code, out, err = await run_main(capsys, "chat", "echo", "hi", "--target", "127.0.0.1:1", "-p", parameter)
    assert code == EXIT_USAGE
    assert out == ""
    assert "aiplatform" in err and "error:" in err


# --- services ---------------------------------------------------------------------------------


async def test_services_lists_every_service_with_its_readiness(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_main(capsys, "services", "--target", target)
    assert code == EXIT_OK
    header, *rows = [line.split() for line in out.splitlines()]
    assert header[:4] == ["NAME", "TYPE", "PROVIDER", "READY"]
    table = {row[0]: row[1:] for row in rows}
    assert list(table) == ["coze", "coze_chatflow", "coze_workflow", "echo", "echo_workflow", "openai"]
    assert table["echo"] == ["chat", "echo", "yes", "delay_ms"]
    assert table["openai"][:3] == ["chat", "openai", "no"]
    assert table["coze"][3] == "bot_id*,"  # required parameters are starred
    assert err == "openai is not ready: OPENAI_API_KEY is not set\n"


async def test_services_json_is_the_list_services_response(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await run_main(capsys, "--json", "services", "--type", "workflow", "--target", target)
    assert code == EXIT_OK
    (line,) = out.splitlines()
    response = json_format.Parse(line, pb.ListServicesResponse())
    assert [service.name for service in response.services] == ["coze_workflow", "echo_workflow"]


# --- chat -------------------------------------------------------------------------------------


async def test_chat_prints_the_streamed_answer(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_main(capsys, "chat", "echo", "你好 big world", "--target", target)
    assert (code, out, err) == (EXIT_OK, "你好 big world\n", "")


async def test_chat_json_prints_each_streamed_message_as_a_json_line(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_main(
        capsys, "chat", "echo", "a b c", "--json", "--target", target, "--conversation-id", "c-1", "--user-id", "u-1"
    )
    assert (code, err) == (EXIT_OK, "")
    chunks = [json_format.Parse(line, pb.StreamChatResponse()) for line in out.splitlines()]
    assert [chunk.delta for chunk in chunks] == ["a", " b", " c", ""]
    assert chunks[-1].finish_reason == pb.FINISH_REASON_STOP
    assert chunks[-1].conversation_id == "c-1"


async def test_chat_no_stream_prints_the_whole_chat_response(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await run_main(capsys, "chat", "echo", "a b c", "--no-stream", "--json", "--target", target)
    assert code == EXIT_OK
    (line,) = out.splitlines()
    assert json.loads(line)["content"] == "a b c"  # a ChatResponse: the unary Chat answered

    code, out, err = await run_main(capsys, "chat", "echo", "a b c", "--no-stream", "--target", target)
    assert (code, out, err) == (EXIT_OK, "a b c\n", "")


async def test_chat_reports_the_conversation_id_on_stderr(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_main(capsys, "chat", "echo", "hi", "--target", target, "--conversation-id", "c-7")
    assert (code, out, err) == (EXIT_OK, "hi\n", "conversation_id: c-7\n")


async def test_chat_text_dash_reads_standard_input(
    target: str, capsys: pytest.CaptureFixture[str], stdin: io.StringIO
) -> None:
    stdin.write("two lines\nfrom stdin\n")
    stdin.seek(0)
    code, out, _ = await run_main(capsys, "chat", "echo", "-", "--target", target)
    assert (code, out) == (EXIT_OK, "two lines\nfrom stdin\n")


# --- errors and targets -----------------------------------------------------------------------


async def test_unknown_service_exits_15_with_one_line_naming_the_reason(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_main(capsys, "chat", "nope", "hi", "--target", target)
    assert code == EXIT_NOT_FOUND
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("aiplatform: NOT_FOUND: ")
    assert "'nope'" in line
    assert line.endswith("(reason SERVICE_NOT_FOUND)")


async def test_target_comes_from_aip_target_and_the_option_wins(
    target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIP_TARGET", target)
    assert await run_main(capsys, "chat", "echo", "hi") == (EXIT_OK, "hi\n", "")

    monkeypatch.setenv("AIP_TARGET", f"127.0.0.1:{free_port()}")
    assert await run_main(capsys, "chat", "echo", "hi", "--target", target) == (EXIT_OK, "hi\n", "")
    code, _, err = await run_main(capsys, "chat", "echo", "hi")
    assert code == EXIT_UNAVAILABLE, err


async def test_refused_connection_exits_24_unavailable_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code, out, err = await run_main(capsys, "services", "--target", f"127.0.0.1:{free_port()}", "--timeout", "10")
    assert time.monotonic() - started < 5  # not the 10 s deadline: the command does not wait for a gateway
    assert (code, out) == (EXIT_UNAVAILABLE, "")
    (line,) = err.splitlines()
    assert line.startswith("aiplatform: UNAVAILABLE: ")


async def test_timeout_ends_a_call_to_a_silent_server_with_deadline_exceeded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Accepts TCP connections and never says a word of HTTP/2.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        code, out, err = await run_main(
            capsys, "services", "--target", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "0.5"
        )
    assert 0.4 < time.monotonic() - started < 5
    assert (code, out) == (EXIT_DEADLINE_EXCEEDED, "")
    (line,) = err.splitlines()
    assert line.startswith("aiplatform: DEADLINE_EXCEEDED: ")


# --- workflows --------------------------------------------------------------------------------


async def test_workflow_prints_each_node_then_the_output(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_main(
        capsys, "workflow", "echo_workflow", "--target", target, "-p", "city=北京", "-p", "days=3"
    )
    assert (code, err) == (EXIT_OK, "")
    assert out.splitlines() == ['[city] "北京"', "[days] 3", '[End] {"output": {"city": "北京", "days": 3}}']


async def test_workflow_json_prints_each_event_as_a_json_line(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await run_main(capsys, "workflow", "echo_workflow", "--json", "--target", target, "-p", "days=3")
    assert code == EXIT_OK
    events = [json_format.Parse(line, pb.StreamWorkflowResponse()) for line in out.splitlines()]
    assert [(event.node_title, event.content) for event in events] == [
        ("days", "3"),
        ("End", '{"output": {"days": 3}}'),
    ]


async def test_interrupt_without_a_terminal_exits_3_with_the_command_that_answers_it(
    target: str, capsys: pytest.CaptureFixture[str], stdin: io.StringIO
) -> None:
    code, out, err = await run_main(
        capsys, "workflow", "coze_workflow", "--target", target, "--workflow-id", fake.WORKFLOW_INTERRUPT
    )
    assert code == EXIT_WAITING_FOR_INPUT
    assert out == f"[{fake.INTERRUPT_NODE_TITLE}] {fake.INTERRUPT_QUESTION}\n"
    waiting, answer_with = err.splitlines()
    assert waiting == f"aiplatform: the workflow waits for input (interrupt type 2): {fake.INTERRUPT_QUESTION}"
    prefix = "aiplatform: answer it with: aiplatform "
    assert answer_with.startswith(prefix)

    # The printed command, run as printed, answers it.
    argv = shlex.split(answer_with.removeprefix(prefix).replace("ANSWER", "上海"))
    assert argv[argv.index("--event-id") :][:2] == ["--event-id", fake.INTERRUPT_EVENT_ID]
    code, out, err = await run_main(capsys, *argv)
    assert (code, err) == (EXIT_OK, "")
    assert out == f"[End] {RESUMED_OUTPUT}\n"


async def test_answers_given_as_options_answer_interrupts_in_turn(
    target: str, capsys: pytest.CaptureFixture[str], stdin: io.StringIO
) -> None:
    workflow = ["workflow", "coze_workflow", "--target", target, "--workflow-id", fake.WORKFLOW_INTERRUPT_TWICE]
    code, out, _ = await run_main(capsys, *workflow, "--answer", "北京", "--answer", "上海")
    assert code == EXIT_OK
    assert out.splitlines()[-1] == f"[End] {RESUMED_OUTPUT}"

    # One answer for two interrupts: the second is reported, with its own event id.
    code, _, err = await run_main(capsys, *workflow, "--answer", "北京")
    assert code == EXIT_WAITING_FOR_INPUT
    assert f"--event-id {fake.INTERRUPT_EVENT_ID_2}" in err


async def test_no_stream_workflow_answers_its_interrupt_too(
    target: str, capsys: pytest.CaptureFixture[str], stdin: io.StringIO
) -> None:
    code, out, _ = await run_main(
        capsys,
        "workflow",
        "coze_workflow",
        "--target",
        target,
        "--no-stream",
        "--workflow-id",
        fake.WORKFLOW_INTERRUPT,
        "--answer",
        "上海",
    )
    assert (code, out) == (EXIT_OK, f"[End] {RESUMED_OUTPUT}\n")


async def test_interrupt_on_a_terminal_asks_and_resumes(
    target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal("\n上海\n"))  # an empty line is asked again
    code, out, err = await run_main(
        capsys, "workflow", "coze_workflow", "--target", target, "--workflow-id", fake.WORKFLOW_INTERRUPT
    )
    assert code == EXIT_OK
    assert out == f"[{fake.INTERRUPT_NODE_TITLE}] {fake.INTERRUPT_QUESTION}\n[End] {RESUMED_OUTPUT}\n"
    assert err == f"{fake.INTERRUPT_QUESTION}\n> > "


# --- the installed script ---------------------------------------------------------------------


async def test_script_prints_each_token_as_it_arrives(target: str) -> None:
    env = script_env(AIP_TARGET=target)
    async with running_script("chat", "echo", "first second third", "-p", "delay_ms=400", env=env) as process:
        assert process.stdout is not None
        assert await read_until(process.stdout, "first") == "first"
        assert process.returncode is None  # the rest is still to come: "first" was flushed on its own
        rest = await asyncio.wait_for(process.stdout.read(), 10)
        assert await process.wait() == EXIT_OK
    assert rest == b" second third\n"


async def test_script_ctrl_c_cancels_the_call_and_exits_130(target: str) -> None:
    words = " ".join(f"w{index}" for index in range(50))  # 50 x 300 ms: 15 s if nothing stopped it
    env = script_env(AIP_TARGET=target)
    async with running_script("chat", "echo", words, "-p", "delay_ms=300", env=env) as process:
        assert process.stdout is not None and process.stderr is not None
        await read_until(process.stdout, "w0")
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 5) == EXIT_CANCELLED
        assert await process.stderr.read() == b"aiplatform: cancelled\n"


async def test_script_asks_a_real_terminal_for_the_answer(target: str) -> None:
    controller, terminal = pty.openpty()
    try:
        env = script_env(AIP_TARGET=target)
        workflow = ["workflow", "coze_workflow", "--workflow-id", fake.WORKFLOW_INTERRUPT]
        async with running_script(*workflow, env=env, stdin=terminal) as process:
            os.close(terminal)
            terminal = -1
            assert process.stdout is not None and process.stderr is not None
            assert await read_until(process.stderr, "> ") == f"{fake.INTERRUPT_QUESTION}\n> "
            os.write(controller, "上海\n".encode())
            out = await asyncio.wait_for(process.stdout.read(), 10)
            assert await process.wait() == EXIT_OK
        assert out.decode().splitlines()[-1] == f"[End] {RESUMED_OUTPUT}"
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
