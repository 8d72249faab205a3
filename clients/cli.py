"""The ``aiplatform`` command: list a gateway's services, chat with one and run workflows from a terminal or a script.

Built on the blocking client (``AIPlatformClient``); the exit codes are in ``EXIT_CODES_HELP`` and the README.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Generator, Sequence
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from aiplatform.v1 import aiplatform_pb2 as pb
from clients._common import API_KEY_VARIABLE, AIPlatformError, default_service_config, to_struct, to_tools
from clients._sync import AIPlatformClient

PROGRAM = "aiplatform"
DEFAULT_TARGET = "localhost:50051"
#: The environment variable that replaces DEFAULT_TARGET; ``--target`` wins over both.
TARGET_VARIABLE = "AIP_TARGET"

EXIT_OK = 0
#: Standard output was closed before everything was written (e.g. ``| head``); the call was cancelled.
EXIT_OUTPUT_CLOSED = 1
#: A usage error: argparse's own code.
EXIT_USAGE = 2
#: The workflow stopped at an interrupt and no answer could be had (no terminal, no ``--answer`` left).
EXIT_WAITING_FOR_INPUT = 3
#: A failed call exits with this plus the gRPC status code's number: NOT_FOUND (5) is 15, UNAVAILABLE (14) is 24.
EXIT_GRPC_ERROR_BASE = 10
#: Ctrl-C: the call was cancelled (128 + SIGINT, as shells report it).
EXIT_CANCELLED = 130

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK}       done
  {EXIT_OUTPUT_CLOSED}       standard output was closed early (the call is cancelled)
  {EXIT_USAGE}       usage error
  {EXIT_WAITING_FOR_INPUT}       the workflow waits for input and no answer was at hand: not a terminal and
          no --answer left; the interrupt and the command that answers it go to stderr
  {EXIT_GRPC_ERROR_BASE}+N    the call failed with gRPC status code N, e.g. 13 INVALID_ARGUMENT,
          14 DEADLINE_EXCEEDED, 15 NOT_FOUND, 17 PERMISSION_DENIED, 18 RESOURCE_EXHAUSTED,
          19 FAILED_PRECONDITION, 24 UNAVAILABLE, 26 UNAUTHENTICATED (no key, or a wrong one: see
          --api-key); stderr has one line: "{PROGRAM}: CODE: message (reason REASON)"
  {EXIT_CANCELLED}     Ctrl-C (the call is cancelled on the gateway)
"""

# A Struct number is a double: integers past this lose digits, so a -p value beyond it stays text.
_MAX_EXACT_INTEGER = 2**53 - 1
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")

#: An event of a workflow run, first or resumed.
WorkflowEvent: TypeAlias = pb.StreamWorkflowResponse | pb.ResumeWorkflowResponse


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` when None) and return the exit code."""
    parser = build_parser(os.environ.get(TARGET_VARIABLE) or DEFAULT_TARGET)
    try:
        args = parser.parse_args(argv)
        if hasattr(args, "parameters"):
            args.parameters = _checked_parameters(parser, args.parameters)
        if getattr(args, "text", "") is None and not args.messages:
            parser.error("chat needs TEXT, or the conversation in --messages")
    except SystemExit as exit:  # --help, or a usage error argparse has printed
        return exit.code if isinstance(exit.code, int) else EXIT_USAGE
    printer = Printer(as_json=args.json)
    try:
        client = AIPlatformClient(
            args.target, timeout=args.timeout, service_config=_service_config(), api_key=args.api_key
        )
    except ValueError as error:  # a key gRPC cannot send; the message does not repeat it
        printer.note(f"{PROGRAM}: {error}")
        return EXIT_USAGE
    try:
        # Closing the client cancels a call still running, whatever ended the block.
        with client:
            command: Callable[[AIPlatformClient, argparse.Namespace, Printer], int] = args.run
            return command(client, args, printer)
    except AIPlatformError as error:
        printer.note(f"{PROGRAM}: {describe_error(error)}")
        return grpc_exit_code(error.code)
    except KeyboardInterrupt:
        printer.note(f"{PROGRAM}: cancelled")
        return EXIT_CANCELLED
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit; point stdout at nothing instead.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OUTPUT_CLOSED


def build_parser(default_target: str) -> argparse.ArgumentParser:
    """The argument parser; ``default_target`` is what ``--target`` defaults to."""
    common = _common_options(default_target, top_level=False)
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Call an AI Platform gateway: list its services, chat, run workflows.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common_options(default_target, top_level=True)],
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    services = commands.add_parser(
        "services", parents=[common], help="list the services", description="List the gateway's services."
    )
    services.add_argument("--type", choices=["chat", "workflow"], help="only services of this type")
    services.set_defaults(run=run_services)

    chat = commands.add_parser(
        "chat",
        parents=[common],
        help="one chat turn, printed as it streams",
        description="Send one user message (after the conversation in --messages, if given) and print the answer "
        "as it arrives (reasoning, when the model reasons, goes to stderr; so do the conversation id, follow-ups "
        "and tool calls). With --tools the model may call functions: run them and send their outputs back as "
        "tool messages in --messages.",
    )
    chat.add_argument("service", metavar="SERVICE")
    chat.add_argument(
        "text",
        metavar="TEXT",
        nargs="?",
        help='the message; "-" reads it from standard input; may be left out after --messages (to send tool outputs)',
    )
    _add_parameters_option(chat)
    chat.add_argument("--no-stream", action="store_true", help="call Chat and print the whole answer at the end")
    chat.add_argument("--conversation-id", default="", metavar="ID", help="continue this conversation")
    chat.add_argument("--user-id", default="", metavar="ID", help="the end user, for the upstream's memory")
    chat.add_argument(
        "--messages",
        type=_messages_file,
        default=[],
        metavar="FILE",
        help="the conversation so far, sent before TEXT: a JSON list of ChatMessage objects as --json prints "
        'them, e.g. [{"role": "user", "content": "..."}, {"role": "assistant", "tool_calls": [...]}, '
        '{"role": "tool", "tool_call_id": "...", "content": "..."}] (bytes in base64)',
    )
    chat.add_argument(
        "--tools",
        type=_tools_file,
        default=[],
        metavar="FILE",
        help='the functions the model may call: a JSON list of {"name", "description", "parameters": '
        '{JSON Schema}}, or of OpenAI\'s {"type": "function", "function": {...}}',
    )
    chat.add_argument(
        "--tool-choice", default="", metavar="CHOICE", help="auto (the default), none, required, or a tool's name"
    )
    chat.add_argument(
        "--chat-id", default="", metavar="ID", help="the turn whose tool calls the tool messages answer (Coze)"
    )
    chat.set_defaults(run=run_chat)

    workflow = commands.add_parser(
        "workflow",
        parents=[common],
        help="run a workflow, printing its events as they stream",
        description="Run a workflow and print each node's output as it arrives. When it stops at an interrupt "
        "(a question), the next --answer answers it; without one, a terminal is asked, and otherwise the command "
        f"exits {EXIT_WAITING_FOR_INPUT} with the interrupt on stderr.",
    )
    workflow.add_argument("service", metavar="SERVICE")
    workflow.add_argument("--workflow-id", default="", metavar="ID", help="the workflow (default: the service's)")
    workflow.add_argument("--bot-id", default="", metavar="ID", help="the bot the workflow runs for, if it needs one")
    workflow.add_argument("--app-id", default="", metavar="ID", help="the app the workflow belongs to, if any")
    _add_parameters_option(workflow)
    workflow.add_argument(
        "--no-stream",
        action="store_true",
        help="call RunWorkflow and print the whole output at the end (a resumed run still streams: "
        "ResumeWorkflow has no unary form)",
    )
    _add_answer_option(workflow)
    workflow.set_defaults(run=run_workflow)

    resume = commands.add_parser(
        "resume",
        parents=[common],
        help="answer a workflow's interrupt and print the rest of the run",
        description="Answer an interrupt that `workflow` printed (its event id and type) and stream the rest.",
    )
    resume.add_argument("service", metavar="SERVICE")
    resume.add_argument("--event-id", required=True, metavar="ID", help="the interrupt's event_id")
    resume.add_argument("--interrupt-type", required=True, type=int, metavar="N", help="the interrupt's type")
    resume.add_argument("--workflow-id", default="", metavar="ID", help="the workflow (default: the service's)")
    _add_answer_option(resume)
    resume.set_defaults(run=run_resume)
    return parser


def _common_options(default_target: str, *, top_level: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name.

    Only the top level's have defaults: a command's copy sets a value only when given, so that
    ``aiplatform --json chat ...`` is not undone by the chat parser's own default.
    """

    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection and output")
    group.add_argument(
        "--target",
        default=default(default_target),
        help=f"the gateway, host:port (default: ${TARGET_VARIABLE} or {DEFAULT_TARGET}; now {default_target})",
    )
    group.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=default(None),
        metavar="SECONDS",
        help="deadline of each call (default: the client's service config, 600 s)",
    )
    group.add_argument(
        "--api-key",
        default=default(None),
        metavar="KEY",
        help=f"the caller key, sent as 'authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}; prefer the "
        "variable, since a command line shows in ps and shell history; '' sends none)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print each response message as one line of JSON (proto field names)",
    )
    return options


def _add_parameters_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        action="append",
        type=parse_parameter,
        default=[],
        metavar="KEY=VALUE",
        help='a parameter; VALUE is JSON when it parses as JSON (3, 0.2, true, {...}, [...], "3") and text '
        "otherwise; integers beyond 2**53-1 (ids) stay text. Repeat for more.",
    )


def _add_answer_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--answer",
        dest="answers",
        action="append",
        default=[],
        metavar="TEXT",
        help="the answer to the next interrupt (repeat for later ones); without one, a terminal is asked",
    )


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return seconds


def parse_parameter(text: str) -> tuple[str, Any]:
    """``key=value`` as a (key, value) pair; the value is JSON when it parses as JSON, else the text."""
    key, separator, raw = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, parse_value(raw)


def parse_value(raw: str) -> Any:
    """A ``-p`` value: JSON when ``raw`` parses as JSON (but no NaN/Infinity, no inexact integer), else ``raw``."""
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError:
        return raw
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_EXACT_INTEGER:
        # A 19-digit Coze bot id typed bare would arrive with other digits; every id in the API is a string.
        return raw
    return value


def _refuse_constant(name: str) -> NoReturn:
    # NaN and Infinity are no JSON; json accepts them, a Struct would carry them, no upstream wants them.
    raise ValueError(name)


def _messages_file(path: str) -> list[pb.ChatMessage]:
    """The ChatMessages in the JSON file at ``path`` (a list, in the API's JSON form)."""
    items = _json_list_file(path)
    try:
        return [json_format.ParseDict(item, pb.ChatMessage()) for item in items]
    except json_format.ParseError as error:
        raise argparse.ArgumentTypeError(f"{path}: {error}") from None


def _tools_file(path: str) -> list[pb.Tool]:
    """The tools in the JSON file at ``path`` (a list)."""
    items = _json_list_file(path)
    try:
        return to_tools(items)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{path}: {error}") from None


def _json_list_file(path: str) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as file:
            items = json.load(file)
    except (OSError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error}") from None
    if not isinstance(items, list):
        raise argparse.ArgumentTypeError(f"{path}: expected a JSON list, got {type(items).__name__}")
    return items


def _checked_parameters(parser: argparse.ArgumentParser, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The parameters as a dict, refused here (exit 2) when the client could not send them."""
    parameters = dict(pairs)
    try:
        to_struct(parameters)
    except ValueError as error:
        parser.error(str(error))
    return parameters


def _service_config() -> dict[str, Any]:
    """The clients' service config, except that a call fails at once when no gateway is reachable.

    The library waits for a ready gateway until the deadline (a rollout should not fail calls); a person at a
    terminal is better served by UNAVAILABLE now than by a silent wait of up to 600 s.
    """
    config = default_service_config()
    for method in config.get("methodConfig", []):
        method["waitForReady"] = False
    return config


# --- output -----------------------------------------------------------------------------------


class Printer:
    """Writes to stdout (text or JSON lines) and stderr, flushing each write so readers see it at once."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        self._mid_line = False

    def text(self, text: str) -> None:
        """Write ``text`` to stdout as it is."""
        if text:
            sys.stdout.write(text)
            sys.stdout.flush()
            self._mid_line = not text.endswith("\n")

    def end_line(self) -> None:
        """End stdout's current line, if text left one open."""
        if self._mid_line:
            self.text("\n")

    def message(self, message: Message) -> None:
        """Write ``message`` to stdout as one line of JSON."""
        as_dict = json_format.MessageToDict(message, preserving_proto_field_name=True)
        self.text(json.dumps(as_dict, ensure_ascii=False) + "\n")

    def note(self, line: str) -> None:
        """Write one line to stderr, after ending stdout's line so that a terminal shows the two apart."""
        self.end_line()
        sys.stderr.write(one_line(line) + "\n")
        sys.stderr.flush()


def one_line(text: str) -> str:
    """``text`` with its line breaks turned into spaces."""
    return _LINE_BREAKS.sub(" ", text.strip())


def describe_error(error: AIPlatformError) -> str:
    """``CODE: message (reason REASON, retry after Ns)``, the parenthesis only with what the gateway sent."""
    facts = [f"reason {error.reason}"] if error.reason else []
    for detail in error.details:
        if isinstance(detail, error_details_pb2.RetryInfo) and detail.HasField("retry_delay"):
            facts.append(f"retry after {detail.retry_delay.ToTimedelta().total_seconds():g}s")
    suffix = f" ({', '.join(facts)})" if facts else ""
    return one_line(f"{error.code.name}: {error.message}{suffix}")


def grpc_exit_code(code: grpc.StatusCode) -> int:
    """The exit code for a call that failed with ``code``: EXIT_GRPC_ERROR_BASE plus the code's number."""
    number: int = code.value[0]
    return EXIT_GRPC_ERROR_BASE + number


# --- commands ---------------------------------------------------------------------------------


def run_services(client: AIPlatformClient, args: argparse.Namespace, printer: Printer) -> int:
    """``aiplatform services``: a table, or the ListServicesResponse as one JSON line."""
    services = client.list_services(args.type)
    if printer.as_json:
        printer.message(pb.ListServicesResponse(services=services))
        return EXIT_OK
    rows = [("NAME", "TYPE", "PROVIDER", "READY", "PARAMETERS (* required)")]
    rows += [
        (
            service.name,
            service.type,
            service.provider,
            "yes" if service.ready else "no",
            ", ".join(parameter.name + ("*" if parameter.required else "") for parameter in service.parameters),
        )
        for service in services
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        printer.text(("  ".join([*cells, row[-1]])).rstrip() + "\n")
    for service in services:
        if not service.ready and service.not_ready_reason:
            printer.note(f"{service.name} is not ready: {service.not_ready_reason}")
    return EXIT_OK


def run_chat(client: AIPlatformClient, args: argparse.Namespace, printer: Printer) -> int:
    """``aiplatform chat``: the answer as it streams, or (``--no-stream``) at once."""
    text = sys.stdin.read().rstrip("\n") if args.text == "-" else args.text
    call = {
        "service_name": args.service,
        "messages": [*args.messages, *([{"role": "user", "content": text}] if text is not None else [])],
        "parameters": args.parameters,
        "user_id": args.user_id,
        "conversation_id": args.conversation_id,
        "tools": args.tools,
        "tool_choice": args.tool_choice,
        "chat_id": args.chat_id,
    }
    if args.no_stream:
        response = client.chat(**call)
        if printer.as_json:
            printer.message(response)
            return EXIT_OK
        if response.reasoning:
            printer.note(response.reasoning)
        printer.text(response.content + "\n")
        _chat_summary(printer, response)
        return EXIT_OK
    last: pb.StreamChatResponse | None = None
    with contextlib.closing(client.iter_chat(**call)) as chunks:
        for chunk in chunks:
            if printer.as_json:
                printer.message(chunk)
            else:
                if chunk.reasoning_delta:
                    sys.stderr.write(chunk.reasoning_delta)
                    sys.stderr.flush()
                printer.text(chunk.delta)
            last = chunk
    if not printer.as_json:
        printer.text("\n")
        if last is not None:
            _chat_summary(printer, last)
    return EXIT_OK


def _chat_summary(printer: Printer, final: pb.ChatResponse | pb.StreamChatResponse) -> None:
    """What a final chat message says besides the text, as lines on stderr."""
    if final.finish_reason not in (pb.FINISH_REASON_UNSPECIFIED, pb.FINISH_REASON_STOP):
        printer.note(f"finish_reason: {pb.FinishReason.Name(final.finish_reason)}")
    for tool_call in final.tool_calls:
        printer.note(
            f"tool call {tool_call.id}: {tool_call.function_name}({tool_call.arguments}) (chat_id {final.chat_id})"
        )
    for follow_up in final.follow_ups:
        printer.note(f"follow-up: {follow_up}")
    if final.conversation_id:
        printer.note(f"conversation_id: {final.conversation_id}")


def run_workflow(client: AIPlatformClient, args: argparse.Namespace, printer: Printer) -> int:
    """``aiplatform workflow``: the run's events as they stream (or its output), then any interrupts answered."""
    call = {
        "service_name": args.service,
        "parameters": args.parameters,
        "workflow_id": args.workflow_id,
        "bot_id": args.bot_id,
        "app_id": args.app_id,
    }
    interrupt: pb.WorkflowInterrupt | None
    if args.no_stream:
        response = client.workflow(**call)
        interrupt = response.interrupt if response.HasField("interrupt") else None
        if printer.as_json:
            printer.message(response)
        elif interrupt is None:
            printer.text(response.output + "\n")
    else:
        interrupt = print_workflow_events(printer, client.iter_workflow(**call))
    return answer_interrupts(client, args, printer, interrupt)


def run_resume(client: AIPlatformClient, args: argparse.Namespace, printer: Printer) -> int:
    """``aiplatform resume``: answer the interrupt named on the command line, then any that follow."""
    interrupt = pb.WorkflowInterrupt(event_id=args.event_id, type=args.interrupt_type)
    return answer_interrupts(client, args, printer, interrupt)


def print_workflow_events(
    printer: Printer, events: Generator[WorkflowEvent, None, None]
) -> pb.WorkflowInterrupt | None:
    """Print a workflow's events as they arrive, ``[node title] content`` per node; return its interrupt, if any."""
    interrupt: pb.WorkflowInterrupt | None = None
    node: tuple[str, str] | None = None  # the node whose line is open
    with contextlib.closing(events):
        for event in events:
            if event.HasField("interrupt"):
                interrupt = event.interrupt
            if printer.as_json:
                printer.message(event)
                continue
            if event.content:
                if node != (event.node_id, event.node_title):
                    printer.end_line()
                    node = (event.node_id, event.node_title)
                    if event.node_title:
                        printer.text(f"[{event.node_title}] ")
                printer.text(event.content)
            if event.node_is_finish and node is not None:
                printer.end_line()
                node = None
    printer.end_line()
    return interrupt


def answer_interrupts(
    client: AIPlatformClient, args: argparse.Namespace, printer: Printer, interrupt: pb.WorkflowInterrupt | None
) -> int:
    """Answer ``interrupt`` and each one the resumed run stops at, until the run ends or no answer is at hand."""
    answers: list[str] = list(args.answers)
    while interrupt is not None:
        answer = answers.pop(0) if answers else ask(printer, interrupt)
        if answer is None:
            _report_waiting(printer, args, interrupt)
            return EXIT_WAITING_FOR_INPUT
        events = client.iter_resume_workflow(
            args.service,
            event_id=interrupt.event_id,
            interrupt_type=interrupt.type,
            resume_data=answer,
            workflow_id=args.workflow_id,
        )
        interrupt = print_workflow_events(printer, events)
    return EXIT_OK


def ask(printer: Printer, interrupt: pb.WorkflowInterrupt) -> str | None:
    """The answer typed at the terminal for ``interrupt``; None when stdin is no terminal or reaches its end."""
    if not sys.stdin.isatty():
        return None
    printer.note(interrupt.data or f"the workflow waits for input (interrupt type {interrupt.type})")
    while True:
        sys.stderr.write("> ")
        sys.stderr.flush()
        try:
            answer = input()
        except EOFError:
            sys.stderr.write("\n")
            return None
        if answer.strip():
            return answer


def _report_waiting(printer: Printer, args: argparse.Namespace, interrupt: pb.WorkflowInterrupt) -> None:
    question = f": {interrupt.data}" if interrupt.data else ""
    printer.note(f"{PROGRAM}: the workflow waits for input (interrupt type {interrupt.type}){question}")
    command = [PROGRAM, "resume", args.service, "--event-id", interrupt.event_id]
    command += ["--interrupt-type", str(interrupt.type)]
    if args.workflow_id:
        command += ["--workflow-id", args.workflow_id]
    if args.target != (os.environ.get(TARGET_VARIABLE) or DEFAULT_TARGET):
        command += ["--target", args.target]
    # Never --api-key: the key is not printed, so one given that way has to be given again (or set in the variable).
    printer.note(f"{PROGRAM}: answer it with: {shlex.join(command)} --answer ANSWER")


if __name__ == "__main__":
    sys.exit(main())
