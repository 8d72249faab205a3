"""Caller keys from the operator's side: keygen, the config file, and what start-up says and refuses."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from aiplatform.v1 import aiplatform_pb2 as pb
from server.callers import KeyEntry
from server.settings import ConfigError, GatewaySettings, Settings
from tests.gateway_process import failed_start, gateway_env, running_gateway

_OPEN_WARNING = b"no caller keys are configured"


async def _keygen(*arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "keygen",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, stdout.decode(), stderr.decode()


async def _grpcurl(target: str, headers: list[str]) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "grpcurl"),
        "-plaintext",
        *headers,
        "-d", '{"service_name":"echo","messages":[{"role":"user","content":"by grpcurl"}]}',
        target,
        "aiplatform.v1.AIPlatformService/Chat",
    ]  # fmt: skip
    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)


async def test_a_key_from_keygen_pasted_into_the_config_file_calls_the_gateway(tmp_path: Path) -> None:
    code, printed, _ = await _keygen("team-search")
    assert code == 0
    key = printed.split(": ", 1)[1].split("\n", 1)[0]
    table = printed[printed.index("[keys.team-search]") :]
    assert hashlib.sha256(key.encode()).hexdigest() in table
    config = tmp_path / "gateway.toml"
    config.write_text(table)
    async with running_gateway(gateway_env(AIP_CONFIG=str(config)), tmp_path) as gateway:
        answer = await gateway.stub.Chat(
            pb.ChatRequest(service_name="echo", messages=[pb.ChatMessage(role="user", content="hello")]),
            metadata=(("authorization", f"Bearer {key}"),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway.stub.ListServices(pb.ListServicesRequest())
        # grpcurl as the README shows it (reflection needs no key), with the key and without.
        with_key, without_key = [
            await _grpcurl(gateway.target, headers) for headers in (["-H", f"authorization: Bearer {key}"], [])
        ]
        log = b"".join(gateway.startup_log)
    assert with_key.returncode == 0 and '"content": "by grpcurl"' in with_key.stdout, with_key.stderr
    assert without_key.returncode != 0 and "Unauthenticated" in without_key.stderr
    assert answer.content == "hello"
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _OPEN_WARNING not in log
    assert key.encode() not in log


async def test_keygen_refuses_a_name_the_config_file_would_not_take() -> None:
    code, printed, error = await _keygen("no spaces please")
    assert code == 1 and printed == ""
    assert "a key name is a letter" in error


async def test_a_gateway_without_keys_says_once_that_it_runs_open(tmp_path: Path) -> None:
    for workers in ("1", "2"):
        async with running_gateway(gateway_env(AIP_WORKERS=workers), tmp_path) as gateway:
            await gateway.stub.ListServices(pb.ListServicesRequest())
            gateway.process.terminate()
            assert gateway.process.stdout is not None  # the log: stderr goes there too
            rest = await gateway.process.stdout.read()
            log = b"".join(gateway.startup_log) + rest
        assert log.count(_OPEN_WARNING) == 1, (workers, log.decode(errors="replace"))


async def test_a_non_loopback_address_without_keys_stops_the_start_with_one_line(tmp_path: Path) -> None:
    # 0.0.0.0 is refused before anything binds it: the test never listens beyond this host.
    code, lines = await failed_start(gateway_env(AIP_ADDRESS="0.0.0.0:0"), tmp_path)
    assert code == 1 and len(lines) == 1, lines
    assert "AIP_ALLOW_UNAUTHENTICATED=true" in lines[0] and "keygen" in lines[0]


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.7:50051", False),
        ("gateway.internal:50051", False),
    ],
)
def test_which_addresses_need_keys_or_the_explicit_allowance(address: str, loopback: bool) -> None:
    def settings(**more: object) -> Settings:
        return Settings(gateway=GatewaySettings(_env_file=None, address=address, **more), **{})  # type: ignore[arg-type]

    if loopback:
        settings().check_exposure()
    else:
        with pytest.raises(ConfigError, match="AIP_ALLOW_UNAUTHENTICATED"):
            settings().check_exposure()
    settings(allow_unauthenticated=True).check_exposure()
    with_keys = settings().model_copy(update={"caller_keys": {"team": KeyEntry(sha256="0" * 64, services=["*"])}})
    with_keys.check_exposure()


def test_the_config_file_refuses_bad_key_tables(tmp_path: Path) -> None:
    from server.settings import read_config_file

    digest = hashlib.sha256(b"k").hexdigest()
    cases = {
        '[keys.team]\nsha256 = "abc"\nservices = ["*"]\n': "sha256",
        f'[keys.team]\nsha256 = "{digest}"\n': "services",
        f'[keys.team]\nsha256 = "{digest}"\nservices = []\n': "services",
        f'[keys.team]\nsha256 = "{digest}"\nservices = ["*"]\nrequests_per_minute = 0\n': "requests_per_minute",
        f'[keys.team]\nsha256 = "{digest}"\nservices = ["*"]\nkey = "aip_clear"\n': "key",
        f'[keys."bad name"]\nsha256 = "{digest}"\nservices = ["*"]\n': "a key name",
        f'[keys.a]\nsha256 = "{digest}"\nservices = ["*"]\n[keys.b]\nsha256 = "{digest}"\nservices = ["*"]\n': (
            "same sha256"
        ),
    }
    for text, named in cases.items():
        path = tmp_path / "gateway.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=named):
            read_config_file(path)


@pytest.mark.parametrize(
    "url",
    ["redis://:pw-SECRET-123@127.0.0.1:notaport/0", "http://:pw-SECRET-123@127.0.0.1:6379", "redis://:pw-SECRET-123@"],
)
async def test_a_bad_redis_url_stops_the_start_with_one_line_that_keeps_its_password(url: str, tmp_path: Path) -> None:
    code, lines = await failed_start(gateway_env(AIP_REDIS_URL=url), tmp_path)
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("aiplatform: invalid setting AIP_REDIS_URL: ")
    assert "pw-SECRET" not in lines[0]
