"""Caller keys from the Python clients and the ``aiplatform`` command, against a real gateway with keys.

``api_key=`` (else ``$AIP_API_KEY``) goes out as ``authorization: Bearer <key>`` on every call, unary and
streaming, sync and async; the key shows in no error, repr, log line or command output. ``keyed_gateway_env``
is the environment of a ``python -m server`` with keys, for the Node.js and Go clients' tests.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from clients import API_KEY_VARIABLE, AIPlatformClient, AIPlatformError, AsyncAIPlatformClient
from clients.cli import EXIT_OK, EXIT_USAGE
from providers.echo import EchoChatService, EchoWorkflowService
from server.callers import KeyEntry
from tests.gateway_process import gateway_env
from tests.harness import gateway_for, make_settings
from tests.test_cli import run_main
from tests.test_client import FLAVORS, HI, _drain, _InThread, _open_client

ALPHA_KEY = "aip_alpha-client-key-for-the-tests-0123456789"
#: A key that may call only the ``echo`` service.
ECHO_ONLY_KEY = "aip_echo-only-client-key-for-the-tests-0123"
WRONG_KEY = "aip_wrong-client-key-for-the-tests-9876543210"
#: The keys the test gateways know, by name: the key and the services it may call.
KEYS = {"alpha": (ALPHA_KEY, ["*"]), "echo-only": (ECHO_ONLY_KEY, ["echo"])}
# Exit codes of failed calls: 10 + the gRPC status code's number.
EXIT_UNAUTHENTICATED = 26
EXIT_PERMISSION_DENIED = 17


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keyed_gateway_env(directory: Path, **overrides: str) -> dict[str, str]:
    """`python -m server`'s environment (`gateway_env`) with KEYS in an AIP_CONFIG file written to ``directory``."""
    config = directory / "keys.toml"
    tables = [
        f'[keys.{name}]\nsha256 = "{_digest(key)}"\nservices = {json.dumps(services)}\n'
        for name, (key, services) in KEYS.items()
    ]
    config.write_text("\n".join(tables), encoding="utf-8")
    return gateway_env(AIP_CONFIG=str(config), **overrides)


@pytest.fixture
async def target() -> AsyncIterator[str]:
    """An in-process gateway that wants one of KEYS on every call, serving ``echo`` and ``echo_workflow``."""
    entries = {name: KeyEntry(sha256=_digest(key), services=services) for name, (key, services) in KEYS.items()}
    settings = make_settings(None, caller_keys=entries)
    async with gateway_for(settings, services=[EchoChatService(), EchoWorkflowService()]) as gateway:
        yield gateway.target


#: A unary and a streaming call of each kind, as parameters of a test.
CALLS = [
    pytest.param(lambda client: client.list_services(), id="list_services"),
    pytest.param(lambda client: client.chat("echo", HI), id="chat"),
    pytest.param(lambda client: client.stream_chat("echo", HI), id="stream_chat"),
    pytest.param(lambda client: _drain(client, "iter_chat", "echo", HI), id="iter_chat"),
    pytest.param(lambda client: client.workflow("echo_workflow", {"city": "北京"}), id="workflow"),
    pytest.param(lambda client: _drain(client, "iter_workflow", "echo_workflow"), id="iter_workflow"),
]

Call = Callable[[Any], Awaitable[Any]]


def _client_object(client: Any) -> AIPlatformClient | AsyncAIPlatformClient:
    """The client itself, not the test's thread wrapper."""
    return client.client if isinstance(client, _InThread) else client


async def _refused(client: Any, call: Call) -> AIPlatformError:
    with pytest.raises(AIPlatformError) as raised:
        await call(client)
    return raised.value


# --- the Python clients -----------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("call", CALLS)
async def test_api_key_is_sent_on_unary_and_streaming_calls(target: str, flavor: str, call: Call) -> None:
    async with _open_client(flavor, target, api_key=ALPHA_KEY) as client:
        assert await call(client)


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("call", CALLS)
async def test_without_a_key_every_call_is_unauthenticated(target: str, flavor: str, call: Call) -> None:
    async with _open_client(flavor, target) as client:
        error = await _refused(client, call)

    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_api_key_comes_from_aip_api_key(target: str, flavor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_VARIABLE, f"  {ALPHA_KEY}\n")  # as `$(cat keyfile)` or an .env line may leave it
    async with _open_client(flavor, target) as client:
        assert (await client.chat("echo", HI)).content == "hi"
        assert await _drain(client, "iter_chat", "echo", HI)


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_the_api_key_argument_wins_over_aip_api_key(
    target: str, flavor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEY_VARIABLE, WRONG_KEY)
    async with _open_client(flavor, target, api_key=ALPHA_KEY) as client:
        assert (await client.chat("echo", HI)).content == "hi"

    monkeypatch.setenv(API_KEY_VARIABLE, ALPHA_KEY)
    async with _open_client(flavor, target, api_key="") as client:  # "": no key, whatever the variable says
        error = await _refused(client, lambda client: client.chat("echo", HI))
    assert error.code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("call", CALLS)
async def test_a_wrong_key_is_unauthenticated_and_shows_in_no_error_repr_or_log(
    target: str, flavor: str, call: Call, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger in the process: the client's, grpc's and the gateway's
    async with _open_client(flavor, target, api_key=WRONG_KEY) as client:
        error = await _refused(client, call)
        client_object = _client_object(client)

    assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED")
    assert error.message == "the caller key is not valid"
    shown = [str(error), repr(error), str(error.__cause__), repr(error.__cause__), repr(client_object), caplog.text]
    shown += [repr(detail) for detail in error.details]
    assert not [text for text in shown if WRONG_KEY in text]
    assert repr(client_object) == f"{type(client_object).__name__}(target={target!r})"


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_key_outside_its_services_sees_and_calls_only_those(target: str, flavor: str) -> None:
    async with _open_client(flavor, target, api_key=ECHO_ONLY_KEY) as client:
        assert [service.name for service in await client.list_services()] == ["echo"]
        assert await client.stream_chat("echo", HI) == "hi"
        error = await _refused(client, lambda client: _drain(client, "iter_workflow", "echo_workflow"))

    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert "'echo_workflow'" in error.message


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_an_authorization_entry_in_a_calls_metadata_replaces_the_clients_key(target: str, flavor: str) -> None:
    async with _open_client(flavor, target, api_key=WRONG_KEY) as client:
        response = await client.chat("echo", HI, metadata=[("authorization", f"Bearer {ALPHA_KEY}")])

    assert response.content == "hi"


@pytest.mark.parametrize("client_type", [AIPlatformClient, AsyncAIPlatformClient])
@pytest.mark.parametrize("key", ["aip_secret\nnext-line", "aip_sécret", "aip_secret\x7f"])
async def test_a_key_grpc_cannot_send_is_refused_without_repeating_it(
    client_type: type[AIPlatformClient | AsyncAIPlatformClient], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="printable ASCII") as by_argument:
        client_type("127.0.0.1:1", api_key=key)
    monkeypatch.setenv(API_KEY_VARIABLE, key)
    with pytest.raises(ValueError, match="printable ASCII") as by_variable:
        client_type("127.0.0.1:1")

    assert "secret" not in str(by_argument.value) + str(by_variable.value)


# --- the aiplatform command -------------------------------------------------------------------


async def test_cli_sends_the_api_key_option_before_or_after_the_command(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_main(capsys, "--api-key", ALPHA_KEY, "chat", "echo", "hi", "--target", target) == (
        EXIT_OK,
        "hi\n",
        "",
    )
    code, out, err = await run_main(capsys, "services", "--target", target, "--api-key", ECHO_ONLY_KEY, "--json")
    assert (code, err) == (EXIT_OK, "")
    assert '"name": "echo"' in out
    assert "echo_workflow" not in out  # ListServices shows a key only its services


async def test_cli_takes_the_key_from_aip_api_key_and_the_option_wins(
    target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEY_VARIABLE, ALPHA_KEY)
    assert await run_main(capsys, "chat", "echo", "hi", "--target", target) == (EXIT_OK, "hi\n", "")
    code, out, _ = await run_main(capsys, "workflow", "echo_workflow", "--target", target, "--no-stream")
    assert code == EXIT_OK, out

    code, out, err = await run_main(capsys, "chat", "echo", "hi", "--target", target, "--api-key", WRONG_KEY)
    assert (code, out) == (EXIT_UNAUTHENTICATED, "")
    assert WRONG_KEY not in err


@pytest.mark.parametrize("key", [None, WRONG_KEY])
async def test_cli_without_a_valid_key_exits_26_with_one_line_that_does_not_echo_it(
    target: str, key: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    key_option = [] if key is None else ["--api-key", key]
    code, out, err = await run_main(capsys, "chat", "echo", "hi", "--target", target, *key_option)

    assert (code, out) == (EXIT_UNAUTHENTICATED, "")
    (line,) = err.splitlines()
    assert line.startswith("aiplatform: UNAUTHENTICATED: ")
    assert line.endswith("(reason UNAUTHENTICATED)")
    assert key is None or key not in line


async def test_cli_a_key_outside_its_services_exits_17_permission_denied(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_main(capsys, "workflow", "echo_workflow", "--target", target, "--api-key", ECHO_ONLY_KEY)

    assert (code, out) == (EXIT_PERMISSION_DENIED, "")
    assert err.startswith("aiplatform: PERMISSION_DENIED: ")


async def test_cli_help_and_a_key_it_cannot_send_do_not_echo_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEY_VARIABLE, ALPHA_KEY)
    code, out, err = await run_main(capsys, "--help")
    assert code == EXIT_OK
    assert "--api-key" in out
    assert ALPHA_KEY not in out + err

    code, out, err = await run_main(capsys, "services", "--api-key", "aip_secret\nnext-line")
    assert (code, out) == (EXIT_USAGE, "")
    assert "printable ASCII" in err
    assert "secret" not in err
